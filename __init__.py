"""ComfyUI-Cloak: Glaze- and Nightshade-style cloaking as ComfyUI nodes. Registers the nodes, nothing else."""
try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # imported outside ComfyUI (engine use, tests of the engine alone)
    ComfyExtension = None

# __package__ is empty when a tool imports this file on its own (pytest does, for a clone in a folder named
# ComfyUI-Cloak, which is no valid package name): only ComfyUI's package import registers the nodes
if ComfyExtension is not None and __package__:
    from .nodes import NODES

    class CloakExtension(ComfyExtension):
        async def get_node_list(self):
            return list(NODES)

    async def comfy_entrypoint() -> ComfyExtension:
        return CloakExtension()
