"""VectorQuantizer / GumbelQuantize: loss terms, straight-through, EMA, k-means, restarts."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genmodels.models.quantize import VectorQuantizer, kmeans, nearest_code, perplexity
from genmodels.models.quantize_fsq import FSQuantizer
from genmodels.models.quantize_gumbel import (
    GumbelQuantize,
    cosine_temperature,
    exponential_temperature,
    gumbel_kl,
)


def _vq_with_codes(codes, **kw):
    vq = VectorQuantizer(codes.shape[0], codes.shape[1], **kw)
    with torch.no_grad():
        vq.embedding.weight.copy_(codes)
    return vq


CODES = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.5]])
# z (1, 2, 1, 3): vectors (0.1, -0.2) -> code 0, (0.8, 1.3) -> code 1, (-1.5, 0.0) -> code 2
Z = torch.tensor([[0.1, -0.2], [0.8, 1.3], [-1.5, 0.0]]).T.reshape(1, 2, 1, 3)


def test_straight_through_gradient_is_identity():
    vq = _vq_with_codes(CODES)
    z = Z.clone().requires_grad_(True)
    z_q, _, info = vq(z)
    v = torch.randn_like(z_q)
    (z_q * v).sum().backward()
    assert torch.equal(z.grad, v)
    assert info.indices.tolist() == [0, 1, 2]
    torch.testing.assert_close(z_q.detach(), CODES[[0, 1, 2]].T.reshape(1, 2, 1, 3))


@pytest.mark.parametrize("legacy", [False, True])
def test_loss_terms_and_beta_placement(legacy):
    beta = 0.25
    vq = _vq_with_codes(CODES, beta=beta, legacy=legacy)
    z = Z.clone().requires_grad_(True)
    _, loss, _ = vq(z)
    # squared distances to the chosen codes, summed over the 2 channels, over 6 entries
    sq = (0.01 + 0.04) + (0.04 + 0.09) + (0.25 + 0.25)
    mse = sq / 6
    torch.testing.assert_close(loss.detach(), torch.tensor(mse * (1 + beta)))
    loss.backward()
    e = CODES.T.reshape(1, 2, 1, 3)
    w_commit, w_code = (1.0, beta) if legacy else (beta, 1.0)
    # d/dz of w_commit * mean((z - sg[e])^2) ; d/de of w_code * mean((sg[z] - e)^2)
    torch.testing.assert_close(z.grad, w_commit * 2 * (Z - e) / 6)
    grad_e = w_code * 2 * (CODES - Z.reshape(2, 3).T) / 6
    torch.testing.assert_close(vq.embedding.weight.grad, grad_e)


@pytest.mark.parametrize("legacy", [False, True])
def test_parity_with_taming_vectorquantizer2(legacy):
    from diffusers.models.autoencoders.vae import VectorQuantizer as RefVQ  # taming's VQ2

    torch.manual_seed(0)
    ref = RefVQ(16, 4, beta=0.25, legacy=legacy, sane_index_shape=True)
    vq = VectorQuantizer(16, 4, beta=0.25, legacy=legacy, sane_index_shape=True)
    vq.load_state_dict(ref.state_dict(), strict=True)
    assert set(vq.state_dict()) == {"embedding.weight"}
    z = torch.randn(2, 4, 3, 5) * 0.05
    zq_r, loss_r, (_, _, ind_r) = ref(z)
    zq, loss, (ppl, counts, ind) = vq(z)
    torch.testing.assert_close(zq, zq_r, rtol=0, atol=0)
    torch.testing.assert_close(loss, loss_r)
    assert torch.equal(ind, ind_r) and ind.shape == (2, 3, 5)
    assert int(counts.sum()) == 30
    torch.testing.assert_close(vq.get_codebook_entry(ind.view(-1), (2, 3, 5, 4)), zq)
    torch.testing.assert_close(vq.get_codebook_entry(ind), zq)  # (B, H, W) indices alone


def test_perplexity_and_usage():
    counts = torch.tensor([2, 2, 0, 0])
    torch.testing.assert_close(perplexity(counts), torch.tensor(2.0))
    vq = _vq_with_codes(CODES)
    _, _, info = vq(Z)
    torch.testing.assert_close(info.perplexity, torch.tensor(3.0))
    assert info.counts.tolist() == [1, 1, 1] and float(info.usage) == 1.0
    assert info.indices.shape == (3,)  # flat (B*H*W,) without sane_index_shape


def test_remap_extra_and_parity(tmp_path):
    from diffusers.models.autoencoders.vae import VectorQuantizer as RefVQ

    path = tmp_path / "used.npy"
    np.save(path, np.array([0, 2]))
    vq = _vq_with_codes(CODES, remap=str(path), unknown_index="extra")
    assert vq.re_embed == 3 and set(vq.state_dict()) == {"embedding.weight", "used"}
    _, _, info = vq(Z)
    assert info.indices.tolist() == [0, 2, 1]  # code 1 is unused -> "extra" index 2
    # the extra index decodes to used[0] (taming's unmap_to_all)
    entry = vq.get_codebook_entry(info.indices, (1, 1, 3, 2))
    torch.testing.assert_close(entry, CODES[[0, 0, 2]].T.reshape(1, 2, 1, 3))
    ref = RefVQ(3, 2, beta=0.25, remap=str(path), unknown_index=1)
    mine = VectorQuantizer(3, 2, remap=str(path), unknown_index=1)
    mine.load_state_dict(ref.state_dict(), strict=True)
    z = torch.randn(2, 2, 4, 4)
    assert torch.equal(mine(z)[2].indices, ref(z)[2][2].view(-1))


def test_get_codebook_entry_errors():
    vq = _vq_with_codes(CODES)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        vq.get_codebook_entry(torch.tensor([0, 3]), (1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        vq.get_codebook_entry(torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="do not fit"):
        vq.get_codebook_entry(torch.tensor([0, 1, 2]), (1, 2, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, H, W, 2\)"):
        vq.get_codebook_entry(torch.tensor([0, 1]), (1, 1, 2, 5))
    with pytest.raises(ValueError, match="integer"):
        vq.get_codebook_entry(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        vq(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="unknown_index"):
        VectorQuantizer(3, 2, remap=[0, 1], unknown_index="drop")
    with pytest.raises(ValueError, match="ema_decay"):
        VectorQuantizer(3, 2, ema_decay=1.0)


def test_ema_update_matches_hand_computation():
    decay, eps = 0.9, 1e-5
    vq = _vq_with_codes(CODES, ema_decay=decay, ema_eps=eps)
    with torch.no_grad():
        vq.embedding.embed_avg.copy_(CODES)
    assert set(vq.state_dict()) == {
        "embedding.weight",
        "embedding.cluster_size",
        "embedding.embed_avg",
    }
    assert not vq.embedding.weight.requires_grad
    # four vectors: two go to code 0, two to code 1, none to code 2
    zs = torch.tensor([[0.1, 0.0], [0.0, -0.3], [0.9, 1.2], [1.1, 0.7]])
    z = zs.T.reshape(1, 2, 2, 2).clone().requires_grad_(True)
    vq.train()
    _, loss, info = vq(z)
    assert info.counts.tolist() == [2, 2, 0]
    n_i = np.array([2.0, 2.0, 0.0])
    sums = np.stack([zs[:2].sum(0).numpy(), zs[2:].sum(0).numpy(), np.zeros(2)])
    size = 0.9 * np.ones(3) + 0.1 * n_i
    avg = 0.9 * CODES.numpy() + 0.1 * sums
    n = size.sum()
    smoothed = (size + eps) / (n + 3 * eps) * n
    np.testing.assert_allclose(vq.embedding.cluster_size.numpy(), size, rtol=1e-6)
    np.testing.assert_allclose(vq.embedding.weight.numpy(), avg / smoothed[:, None], rtol=1e-5)
    # loss is the commitment term alone: beta * mean((z - e)^2), e the codes before the update
    e = CODES[[0, 0, 1, 1]]
    torch.testing.assert_close(loss.detach(), 0.25 * ((zs - e) ** 2).mean())
    vq.eval()
    before = vq.embedding.weight.clone()
    vq(z)
    assert torch.equal(vq.embedding.weight, before)  # no updates outside training


def _clusters(n_per=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    pts = centers.repeat_interleave(n_per, 0) + 0.1 * torch.randn(4 * n_per, 2, generator=g)
    return pts, centers


def _distortion(vq, pts):
    w = vq.embedding.weight.detach()
    return ((pts - w[nearest_code(pts, w)]) ** 2).sum(1).mean()


def test_kmeans_init_reduces_distortion():
    torch.manual_seed(0)
    pts, centers = _clusters()
    z = pts.T.reshape(1, 2, 16, 16)
    plain = VectorQuantizer(4, 2).train()
    init = VectorQuantizer(4, 2, kmeans_init=True, kmeans_iters=10).train()
    init.load_state_dict(plain.state_dict(), strict=False)
    plain(z)
    _, _, info = init(z)
    assert bool(init.initted)
    assert float(_distortion(init, pts)) < 0.05 < float(_distortion(plain, pts))
    assert info.counts.tolist() == [64, 64, 64, 64]
    c, counts = kmeans(pts, 4, iters=10)
    assert sorted(counts.tolist()) == [64] * 4
    assert torch.cdist(c, centers).min(0).values.max() < 0.05


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    pts, _ = _clusters(n_per=16)
    z = pts.T.reshape(1, 2, 8, 8)
    # all codes start near the origin: only one or two win every vector
    vq = VectorQuantizer(8, 2, dead_code_steps=2).train()
    _, _, info0 = vq(z)
    used_before = int((info0.counts > 0).sum())
    assert used_before < 8
    vq(z)  # second step without use -> the dead codes are re-seeded from encoder outputs
    w = vq.embedding.weight
    dead = (info0.counts == 0).nonzero().squeeze(1)
    dist = torch.cdist(w[dead], pts).min(1).values
    assert torch.all(dist < 1e-6)  # each revived code is one of the batch's vectors
    _, _, info2 = vq(z)
    assert int((info2.counts > 0).sum()) > used_before


def test_l2_normalised_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3, l2_normalize=True)
    z = torch.randn(2, 3, 4, 4) * 5
    z_q, _, info = vq(z)
    torch.testing.assert_close(z_q.norm(dim=1), torch.ones(2, 4, 4))
    zn = F.normalize(z, dim=1).permute(0, 2, 3, 1).reshape(-1, 3)
    cos = zn @ F.normalize(vq.embedding.weight, dim=1).T
    assert torch.equal(info.indices, cos.argmax(1))


def test_gumbel_kl_and_quantisation():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25])).view(1, 3, 1, 1)
    kl = 0.5 * math.log(1.5) + 2 * 0.25 * math.log(0.75)  # sum q log(q * K)
    torch.testing.assert_close(gumbel_kl(logits, 3), torch.tensor(kl))
    torch.testing.assert_close(gumbel_kl(torch.zeros(2, 5, 3, 3), 5), torch.tensor(0.0))

    gq = GumbelQuantize(4, 2, 3, kl_weight=0.1)
    assert set(gq.state_dict()) == {"proj.weight", "proj.bias", "embed.weight"}
    z = torch.randn(2, 4, 3, 3)
    gq.eval()
    z_q, loss, info = gq(z)
    torch.testing.assert_close(loss, 0.1 * gumbel_kl(gq.proj(z), 3))
    codes = gq.get_codebook_entry(info.indices)  # (B, H, W) indices -> (B, C, H, W)
    torch.testing.assert_close(z_q, codes)
    # matches F.gumbel_softmax on the projected logits for the same global seed
    torch.manual_seed(1)
    _, _, info = gq(z)
    torch.manual_seed(1)
    expected = F.gumbel_softmax(gq.proj(z), tau=1.0, dim=1, hard=True).argmax(1)
    assert torch.equal(info.indices, expected)
    # training with straight-through: gradients reach the projection and the codebook
    gq.train()
    z_q, loss, _ = gq(z)
    (z_q.sum() + loss).backward()
    assert gq.proj.weight.grad.abs().sum() > 0 and gq.embed.weight.grad.abs().sum() > 0


def test_gumbel_remap_uses_only_the_used_codes():
    torch.manual_seed(0)
    gq = GumbelQuantize(4, 2, 5, remap=[1, 3], unknown_index="extra").eval()
    assert set(gq.state_dict()) == {"proj.weight", "proj.bias", "embed.weight", "used"}
    z = torch.randn(2, 4, 3, 3)
    z_q, _, info = gq(z)
    assert set(info.indices.unique().tolist()) <= {0, 1}
    assert set(info.counts.nonzero().squeeze(1).tolist()) <= {1, 3}
    torch.testing.assert_close(gq.get_codebook_entry(info.indices), z_q)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):  # 2 used codes + the extra index
        gq.get_codebook_entry(torch.tensor([3]), (1, 1, 1, 2))


def test_temperature_schedules():
    assert cosine_temperature(0) == pytest.approx(0.9)
    assert cosine_temperature(1_000_001) == pytest.approx(1e-6)
    assert cosine_temperature(500_000, max_decay_steps=1_000_000, t_min=0.0) == pytest.approx(0.45)
    assert cosine_temperature(5, warm_up_steps=10, t_start=0.0, t_max=1.0) == pytest.approx(0.5)
    assert exponential_temperature(0) == 1.0
    assert exponential_temperature(10**9) == 0.0625


def test_fsq_grid_indices_and_gradient():
    fsq = FSQuantizer([3, 4])
    assert fsq.n_e == 12 and fsq.state_dict() == {}
    book = fsq.implicit_codebook()
    assert torch.equal(fsq.codes_to_indices(book), torch.arange(12))
    # code (1, -0.5): digits (2, 1) -> 2 + 1 * 3 = 5
    assert fsq.codes_to_indices(torch.tensor([1.0, -0.5])).item() == 5
    torch.testing.assert_close(book[5], torch.tensor([1.0, -0.5]))
    z = (torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_()
    z_q, loss, info = fsq(z)
    assert float(loss) == 0.0 and info.indices.shape == (4, 8, 8) and float(info.usage) == 1.0
    assert set(z_q[:, 0].unique().tolist()) == {-1.0, 0.0, 1.0}
    assert set(z_q[:, 1].unique().tolist()) == {-1.0, -0.5, 0.0, 0.5}
    torch.testing.assert_close(fsq.get_codebook_entry(info.indices), z_q.detach())
    z_q.sum().backward()  # straight-through: d z_q / dz = d bound / dz / (L // 2)
    half_l = torch.tensor([1.0, 1.5]).view(1, 2, 1, 1) * (1 + 1e-3)
    shift = torch.atanh(torch.tensor([0.0, 0.5]).view(1, 2, 1, 1) / half_l)
    dbound = (1 - torch.tanh(z.detach() + shift) ** 2) * half_l
    torch.testing.assert_close(z.grad, dbound / torch.tensor([1.0, 2.0]).view(1, 2, 1, 1))
    with pytest.raises(ValueError, match="levels"):
        FSQuantizer([3, 1])
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        fsq.get_codebook_entry(torch.tensor([12]))


@pytest.mark.parametrize("l2", [False, True])
def test_dead_code_restart_with_a_gradient_trained_codebook_backpropagates(l2: bool) -> None:
    """The restart happens inside forward; backward of that same step must still work."""
    torch.manual_seed(0)
    q = VectorQuantizer(16, 4, dead_code_steps=1, l2_normalize=l2).train()
    before = q.embedding.weight.detach().clone()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_q, loss, info = q(z)
    (z_q.sum() + loss).backward()
    restarted = info.counts == 0
    assert restarted.any() and z.grad is not None
    assert not torch.equal(q.embedding.weight[restarted], before[restarted])
    grad = q.embedding.weight.grad
    assert torch.equal(grad[restarted], torch.zeros_like(grad[restarted]))
