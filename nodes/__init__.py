"""ComfyUI adapters of the pack: schema + one engine call each. Node files import the engine, the shared
schema (schema.py), the ComfyUI glue (comfy_adapters.py) and the file rules (files.py), never each other."""
from . import (dataset_nodes, encoder_nodes, glaze_nodes, mimicry_nodes, nightshade_nodes, portfolio_nodes,
               robustness_nodes, scoring_nodes)
from .sample_files import install_into_comfy_input

install_into_comfy_input()  # the example workflows' images, into ComfyUI's input folder when missing

NODES = [encoder_nodes.LoadVAEEncoder, encoder_nodes.StyleTargetLatents, glaze_nodes.GlazePerturb,
         robustness_nodes.RobustnessCheck, nightshade_nodes.NightshadePoison, dataset_nodes.SavePoisonDataset,
         portfolio_nodes.LoadArtworkFolder, portfolio_nodes.SaveCloakedFolder, scoring_nodes.StyleMimicryScore,
         mimicry_nodes.TrainMiniatureMimic, mimicry_nodes.SampleMiniatureMimic]
