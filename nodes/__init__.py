"""ComfyUI adapters of the pack: schema + one engine call each."""
from .encoder_nodes import LoadVAEEncoder, StyleTargetLatents
from .glaze_nodes import GlazePerturb
from .robustness_nodes import RobustnessCheck
from .nightshade_nodes import NightshadePoison
from .dataset_nodes import SavePoisonDataset

NODES = [LoadVAEEncoder, StyleTargetLatents, GlazePerturb, RobustnessCheck, NightshadePoison, SavePoisonDataset]
