"""ComfyUI node layer of the pack (V3 schema). The only package here that imports ``comfy``."""
from comfy_api.latest import ComfyExtension

from . import compat, elastic_nodes, nested_nodes, split_nodes, stop_route


def all_nodes():
    return [node for module in (nested_nodes, split_nodes, elastic_nodes) for node in module.NODES]


class NestedSplitElasticExtension(ComfyExtension):
    async def get_node_list(self):
        # every version asks for the node list once per load (not all call on_load): add the Stop &
        # keep route here, inside a server only, and once
        server = compat.prompt_server()
        if server is not None and not getattr(server, "_nested_routes", False):
            server._nested_routes = stop_route.register(server)
        return all_nodes()
