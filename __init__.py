"""ComfyUI-Cloak: Glaze- and Nightshade-style cloaking as ComfyUI nodes. Registers the nodes, nothing else."""
try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # imported outside ComfyUI (engine use, tests of the engine alone)
    ComfyExtension = None

if ComfyExtension is not None:
    from .nodes import NODES

    class CloakExtension(ComfyExtension):
        async def get_node_list(self):
            return list(NODES)

    async def comfy_entrypoint() -> ComfyExtension:
        return CloakExtension()
