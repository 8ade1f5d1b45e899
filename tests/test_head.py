"""Adapter, decoder and decoder affinity (docs/method.md §6)."""
import torch
import torch.nn.functional as F

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
    base = head.adapter(x, (2, 2))
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


def test_head_equals_the_convolutional_reference():
    """The 1×1 convs run as matrix products over tokens: same values as the plain NCHW convs."""
    torch.manual_seed(0)
    head = ExCELHead(num_layers=3, in_dim=8, num_classes=4, adapter_hidden=16, adapter_dim=12,
                     decoder_heads=2).double().eval()
    h, w = 3, 5
    x = torch.randn(3, 2, 1 + h * w, 8, dtype=torch.float64)
    maps = [mlp(tokens[:, 1:]).transpose(1, 2).reshape(2, 12, h, w) for mlp, tokens in zip(head.adapter.mlps, x)]
    features = F.conv2d(torch.cat(maps, dim=1), head.adapter.fuse.weight, head.adapter.fuse.bias)
    decoded = head.decoder.transformer(features.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, 12, h, w)
    logits = F.conv2d(decoded, head.decoder.classifier.weight, head.decoder.classifier.bias)
    got_features, got_logits, _ = head(x, (h, w))
    torch.testing.assert_close(got_features, features)
    torch.testing.assert_close(got_logits, logits)
    assert got_logits.shape == (2, 5, h, w)


def test_adapter_dropout_drops_whole_channels():
    torch.manual_seed(0)
    head = ExCELHead(num_layers=2, in_dim=8, num_classes=2, adapter_hidden=8, adapter_dim=64, dropout=0.5,
                     decoder_heads=2).train()
    features = head.adapter(torch.randn(2, 3, 1 + 4 * 4, 8), (4, 4))
    dropped = (features == 0).all(dim=-1).all(dim=-1)           # B×dim: channels zero at every position
    assert 0 < dropped.sum() < dropped.numel()
    assert ((features == 0).sum(dim=(-2, -1)) % 16 == 0).all()  # a channel is dropped whole or not at all
