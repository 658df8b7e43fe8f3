"""ComfyUI node layer of the pack (V3 schema). The only package here that imports ``comfy``."""
from comfy_api.latest import ComfyExtension

from . import elastic_nodes, nested_nodes, split_nodes


def all_nodes():
    return [node for module in (nested_nodes, split_nodes, elastic_nodes) for node in module.NODES]


class NestedSplitElasticExtension(ComfyExtension):
    async def get_node_list(self):
        return all_nodes()
