"""ComfyUI adapters of the pack: schema + one engine call each."""
from .encoder_nodes import LoadVAEEncoder, StyleTargetLatents
from .glaze_nodes import GlazePerturb
from .robustness_nodes import RobustnessCheck
from .nightshade_nodes import NightshadePoison
from .dataset_nodes import SavePoisonDataset
from .portfolio_nodes import LoadArtworkFolder, SaveCloakedFolder
from .sample_files import install_into_comfy_input
from .scoring_nodes import StyleMimicryScore

install_into_comfy_input()  # the example workflows' images, into ComfyUI's input folder when missing

NODES = [LoadVAEEncoder, StyleTargetLatents, GlazePerturb, RobustnessCheck, NightshadePoison, SavePoisonDataset,
         LoadArtworkFolder, SaveCloakedFolder, StyleMimicryScore]
