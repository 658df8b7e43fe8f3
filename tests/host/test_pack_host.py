"""The pack as ComfyUI loads it: registration, schemas, tooltips, descriptions, docs."""
import os
import sys

from conftest import require_host

host_ = require_host()

import comfy_host  # noqa: E402


def pack_nodes(host):
    return host.pack_module("nodes").all_nodes()


def test_pack_registers_its_nodes_through_the_v3_entrypoint(host):
    names = {n.define_schema().node_id for n in pack_nodes(host)}
    assert {"NestedKSampler", "NestedSampler", "NestedOfficialOuterScheduler"} <= names
    for name in names:
        assert name in host.nodes.NODE_CLASS_MAPPINGS
    assert not any(n.startswith("NSETest") for n in names)        # test-only nodes are never the pack's
    assert sys.modules["nodes"] is host.nodes and hasattr(host.nodes, "KSampler")   # ComfyUI's nodes not shadowed


def test_every_node_has_description_tooltips_and_a_docs_page(host):
    for cls in pack_nodes(host):
        schema = cls.define_schema()
        assert schema.description and len(schema.description) > 30, schema.node_id
        for inp in schema.inputs:
            assert inp.tooltip, f"{schema.node_id}.{inp.id} has no tooltip"
        for out in schema.outputs:
            assert out.tooltip, f"{schema.node_id} output {out.id} has no tooltip"
        assert os.path.isfile(os.path.join(comfy_host.ROOT, "web", "docs", f"{schema.node_id}.md"))
