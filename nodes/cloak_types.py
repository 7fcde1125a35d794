"""Custom ComfyUI socket types of the pack, declared once."""
from comfy_api.latest import io

CloakEncoder = io.Custom("CLOAK_ENCODER")
StyleTarget = io.Custom("STYLE_TARGET")
