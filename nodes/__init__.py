"""ComfyUI node layer of the pack (V3 schema). The only package here that imports ``comfy``."""
from comfy_api.latest import ComfyExtension

from . import nested_nodes

_NODE_MODULES = [nested_nodes]
for _name in ("split_nodes", "elastic_nodes"):
    try:
        _NODE_MODULES.append(__import__(f"{__name__}.{_name}", fromlist=["NODES"]))
    except ModuleNotFoundError as e:          # a method whose node module is not present yet
        if e.name != f"{__name__}.{_name}":
            raise


def all_nodes():
    return [node for module in _NODE_MODULES for node in module.NODES]


class NestedSplitElasticExtension(ComfyExtension):
    async def get_node_list(self):
        return all_nodes()
