"""The digits demo's stand-in VAE (nodes/demo/digits.py) is an exact, norm-preserving, local linear map."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dg():
    spec = importlib.util.spec_from_file_location("procache_demo_digits_t", ROOT / "nodes" / "demo" / "digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_map_is_exactly_invertible_and_orthogonal(dg, family):
    img = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = dg.image_to_model(img, family)
    assert z.shape[1:] == (dg.LATENT_CHANNELS[family], *dg.LATENT_HW[family])
    assert dg.family_of_latent(z) == family
    assert torch.allclose(dg.model_to_image(z, family), img, atol=1e-5)
    assert torch.allclose(z.flatten(1).norm(dim=1), img.flatten(1).norm(dim=1), rtol=1e-5)


@pytest.mark.parametrize("family,patch,block", [("flux", 2, 8), ("pixart", 4, 8)])
def test_each_token_holds_one_image_block(dg, family, patch, block):
    """Changing one 8x8 image block changes exactly one model token (patch x patch latent pixels)."""
    img = torch.zeros(1, 1, 32, 32)
    img2 = img.clone()
    img2[..., 8:16, 16:24] = 1.0
    d = (dg.image_to_model(img2, family) - dg.image_to_model(img, family)).abs().sum(1)[0]
    tok = torch.nn.functional.avg_pool2d(d[None, None], patch)[0, 0]
    assert int((tok > 0).sum()) == 1


def test_digit_embeddings_are_fixed(dg):
    a, pa = dg.embeddings()
    b, pb = dg.embeddings()
    assert torch.equal(a, b) and torch.equal(pa, pb)
    assert a.shape == (11, dg.TOKENS, dg.EMBED_DIM) and pa.shape == (11, dg.EMBED_DIM)
    with pytest.raises(ValueError, match="not a digits-demo latent"):
        dg.family_of_latent(torch.zeros(1, 4, 8, 8))
