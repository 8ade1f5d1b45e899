"""Adapter, decoder and decoder affinity (docs/method.md §6)."""
import torch

from excel.modeling.head import ExCELHead, decoder_affinity


def test_head_shapes_and_trainable():
    torch.manual_seed(0)
    head = ExCELHead(num_layers=12, in_dim=48, num_classes=20, adapter_hidden=32, adapter_dim=32, decoder_heads=4)
    layer_outputs = torch.randn(12, 2, 1 + 4 * 6, 48)
    features, logits, aff = head(layer_outputs, (4, 6))
    assert features.shape == (2, 32, 4, 6)
    assert logits.shape == (2, 21, 4, 6)
    assert aff.shape == (2, 24, 24)
    (logits.sum() + aff.sum()).backward()
    assert all(p.grad is not None for p in head.parameters())


def test_adapter_uses_patch_tokens_of_every_layer():
    torch.manual_seed(0)
    head = ExCELHead(num_layers=3, in_dim=8, num_classes=2, adapter_hidden=8, adapter_dim=8, decoder_heads=2).eval()
    x = torch.randn(3, 1, 1 + 4, 8)
    base = head.adapter(x[:, :, 1:], (2, 2))
    y = x.clone()
    y[:, :, 0] += 5.0                                   # the CLS token takes no part
    torch.testing.assert_close(head(y, (2, 2))[0], base)
    z = x.clone()
    z[2, :, 1] += 1.0                                   # every layer does
    assert not torch.allclose(head(z, (2, 2))[0], base)


def test_decoder_affinity_uses_batch_mean():
    torch.manual_seed(0)
    f = torch.randn(2, 5, 3, 3)
    r = f.flatten(2) / f.flatten(2).norm(dim=1, keepdim=True)
    s = torch.einsum("bci,bcj->bij", r, r)
    torch.testing.assert_close(decoder_affinity(f), torch.sigmoid((s - s.mean()) * 3))
