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


def test_samplers_never_modify_the_input_latent(host):
    import torch
    from mock_models import make_cond, make_model
    src = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, 1, 8, 16)
    pos, neg = make_cond("sd15", 0.7), make_cond("sd15", -0.3)
    cases = [
        ("NestedKSampler", dict(seed=1, outer_steps=2, inner_steps=2, cfg=5.0, inner_sampler="euler_ancestral",
                                inner_scheduler="official", outer_scheduler="official_outer", denoise=0.6,
                                inner_eta=0.85, outer_eta=1.0, time_budget=0.0, switch_at_outer_step=0)),
        ("SplitGuidedSampler", dict(seed=1, steps=4, cfg=5.0, scheduler="split_respace", denoise=0.6, method="ltsp2",
                                    split_term="cfg_delta", split_base="cond", eval_mode="auto", ab_coeffs="fixed",
                                    final_step="auto", guidance_scale=1.0)),
    ]
    for name, kw in cases:
        lat = {"samples": src.clone(), "noise_mask": mask.clone()}
        host.node(name).execute(model=make_model(), positive=pos, negative=neg, latent_image=lat, **kw)
        assert torch.equal(lat["samples"], src) and torch.equal(lat["noise_mask"], mask), name
    lat = {"samples": src.clone()}
    host.node("ElasticLatentSampler").execute(
        model=make_model(), positive=pos, negative=neg, latent_image=lat, seed=1, steps=2, cfg=5.0, preset="auto",
        resampling_steps=-1, new_p=0.3, rrg_init_weight=-1.0, cosine_scale=10.0, rrg_stop_t=0.4, repaint=True,
        patch_size=0, view_batch_size=16, base_resolution=0, size_cond="per_call", mode="clean")
    assert torch.equal(lat["samples"], src)
