"""ComfyUI adapters of the pack: schema + one engine call each."""
from .encoder_nodes import LoadVAEEncoder, StyleTargetLatents
from .glaze_nodes import GlazePerturb

NODES = [LoadVAEEncoder, StyleTargetLatents, GlazePerturb]
