"""Nested · Split · Elastic — training-free sampling methods as ComfyUI nodes.

ComfyUI loads this folder from ``custom_nodes/`` and calls :func:`comfy_entrypoint` (V3 API).
Importing the package itself needs only torch: the node layer (the only code that imports
``comfy``) is imported lazily, so tests and scripts can use ``<pack>.samplers`` without ComfyUI.
"""

WEB_DIRECTORY = "./web"

__version__ = "0.1.0"


async def comfy_entrypoint():
    from .nodes import NestedSplitElasticExtension

    return NestedSplitElasticExtension()
