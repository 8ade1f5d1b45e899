"""Static CAMs: feature surgery as matrix products against the published element-wise form (docs/method.md §4)."""
import torch

from excel.modeling.cam import feature_surgery, surgery_cams


def elementwise_surgery(image_features, text_features, t=2.0):
    """The published B×N×T×D computation, one image at a time."""
    sims = []
    for feats in image_features:
        prob = torch.softmax(t * (feats[:1] @ text_features.T), dim=-1)
        w = prob / prob.mean(-1, keepdim=True)
        f = feats[:, None, :] * text_features[None, :, :] * w[:, :, None]
        f = f - f.mean(1, keepdim=True)
        sims.append(f.sum(-1))
    return torch.stack(sims)


def test_matrix_surgery_equals_elementwise_form():
    torch.manual_seed(0)
    tokens = torch.nn.functional.normalize(torch.randn(3, 26, 32, dtype=torch.float64), dim=1)
    text = torch.nn.functional.normalize(torch.randn(11, 32, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(feature_surgery(tokens, text), elementwise_surgery(tokens, text), atol=1e-5, rtol=0)


def test_surgery_cams_normalise_over_tokens_including_cls():
    torch.manual_seed(1)
    B, h, w, D, C_fg, C_bg = 2, 4, 6, 32, 5, 3
    tokens = torch.randn(B, 1 + h * w, D)
    text = torch.nn.functional.normalize(torch.randn(C_fg + C_bg, D), dim=-1)
    cams = surgery_cams(tokens, text, C_fg, (h, w))
    assert cams.shape == (B, C_fg, h, w)

    normed = tokens / tokens.norm(dim=1, keepdim=True)            # over the token dimension
    sim = elementwise_surgery(normed, text)
    expected = torch.empty(B, C_fg, h, w)
    for b in range(B):
        for c in range(C_fg):
            col = sim[b, :, c]
            col = (col - col.min()) / (col.max() - col.min())    # CLS included in min/max
            expected[b, c] = col[1:].reshape(h, w)
    torch.testing.assert_close(cams, expected, atol=1e-5, rtol=0)
    assert cams.min() >= 0 and cams.max() <= 1
