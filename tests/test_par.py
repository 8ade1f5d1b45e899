import math

import numpy as np
import pytest
import torch
from par_reference import StraightforwardPAR, realistic_image

from excel.labels import par_native
from excel.labels.par import PAR
from excel.labels.par_native import load_kernels, native_affinity

NATIVE = pytest.mark.skipif(load_kernels() is None, reason="no C compiler: the native PAR form is not built")
FORMS = ["sparse", "gather", pytest.param("native", marks=NATIVE)]


def _resize_align_corners(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Plain bilinear resize with align_corners=True: C×Hi×Wi → C×H×W."""
    channels, in_h, in_w = image.shape
    out = np.zeros((channels, height, width))
    for y in range(height):
        sy = y * (in_h - 1) / (height - 1) if height > 1 else 0.0
        y0 = int(math.floor(sy))
        y1 = min(y0 + 1, in_h - 1)
        fy = sy - y0
        for x in range(width):
            sx = x * (in_w - 1) / (width - 1) if width > 1 else 0.0
            x0 = int(math.floor(sx))
            x1 = min(x0 + 1, in_w - 1)
            fx = sx - x0
            top = image[:, y0, x0] * (1 - fx) + image[:, y0, x1] * fx
            bottom = image[:, y1, x0] * (1 - fx) + image[:, y1, x1] * fx
            out[:, y, x] = top * (1 - fy) + bottom * fy
    return out


def _reference_par(image, masks, dilations, num_iter, temperature=0.3, position_weight=0.01):
    """docs/method.md §5 PAR written pixel by pixel for one image: image C×Hi×Wi, masks K×H×W (numpy)."""
    _, height, width = masks.shape
    image = _resize_align_corners(image, height, width)
    neighbours = []
    for d in dilations:
        for dy, dx in [(-d, -d), (-d, 0), (-d, d), (0, -d), (0, d), (d, -d), (d, 0), (d, d)]:
            distance = d * math.sqrt(2) if dy and dx else d
            neighbours.append((dy, dx, distance))
    count = len(neighbours)

    def value(array, y, x):  # replicate padding
        return array[:, min(max(y, 0), height - 1), min(max(x, 0), width - 1)]

    distances = np.array([n[2] for n in neighbours])
    position = -(distances / (np.std(distances, ddof=1) + 1e-8) / temperature) ** 2
    position = np.exp(position - position.max())
    position /= position.sum()

    weights = np.zeros((height, width, count))
    for y in range(height):
        for x in range(width):
            nb = np.stack([value(image, y + dy, x + dx) for dy, dx, _ in neighbours], axis=1)  # C×M
            std = nb.std(axis=1, ddof=1, keepdims=True)
            color = -(np.abs(nb - image[:, y, x][:, None]) / (std + 1e-8) / temperature) ** 2
            color = color.mean(axis=0)
            color = np.exp(color - color.max())
            weights[y, x] = color / color.sum() + position_weight * position

    for _ in range(num_iter):
        new = np.zeros_like(masks)
        for y in range(height):
            for x in range(width):
                for n, (dy, dx, _) in enumerate(neighbours):
                    new[:, y, x] += weights[y, x, n] * value(masks, y + dy, x + dx)
        masks = new
    return masks


@pytest.mark.parametrize("form", ["sparse", "gather"])  # the float64 forms
@pytest.mark.parametrize("image_size", [(9, 11), (6, 5)])
def test_par_matches_pixel_loop_reference(image_size, form):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, *image_size, generator=generator, dtype=torch.float64)
    masks = torch.rand(2, 2, 9, 11, generator=generator, dtype=torch.float64)
    dilations = (1, 2, 4, 8, 12, 24)  # 12 and 24 reach past the 9×11 maps
    par = PAR(dilations=dilations, num_iter=3, form=form).to(torch.float64)
    out = par(image, masks)
    assert out.shape == masks.shape
    for b in range(2):
        expected = _reference_par(image[b].numpy(), masks[b].numpy(), dilations, num_iter=3)
        np.testing.assert_allclose(out[b].numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_par_float32_with_other_constants(form):
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 9, 11, generator=generator)
    masks = torch.rand(1, 3, 9, 11, generator=generator)
    par = PAR(dilations=(1, 3), num_iter=2, color_temperature=0.5, position_temperature=0.5, position_weight=0.1,
              form=form)
    expected = _reference_par(image[0].double().numpy(), masks[0].double().numpy(), (1, 3), 2,
                              temperature=0.5, position_weight=0.1)
    np.testing.assert_allclose(par(image, masks)[0].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_par_weights_sum_and_constant_maps(form):
    par = PAR(num_iter=20, form=form)
    image = torch.rand(2, 3, 16, 16)
    affinity = par.affinity(image)
    assert affinity.shape == (2, 48, 16, 16)
    torch.testing.assert_close(affinity.sum(dim=1), torch.full((2, 16, 16), 1.01))
    constant = torch.ones(2, 4, 16, 16)
    torch.testing.assert_close(par(image, constant), torch.full_like(constant, 1.01 ** 20))


def test_par_position_kernel_is_a_buffer():
    par = PAR()
    assert "position_affinity" in dict(par.named_buffers())
    assert par.position_affinity.numel() == 48
    assert "position_affinity" not in par.state_dict()
    assert not torch.allclose(PAR(position_temperature=0.5).position_affinity, par.position_affinity)


def test_par_rejects_bad_arguments():
    with pytest.raises(ValueError, match="par.dilations"):
        PAR(dilations=(1, 0))
    with pytest.raises(ValueError, match="same B"):
        PAR()(torch.rand(2, 3, 8, 8), torch.rand(1, 2, 8, 8))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("size, maps", [((48, 64), 3), ((20, 17), 3), ((33, 41), 6), ((16, 35), 1)])
def test_par_matches_straightforward_version(size, maps, form, device):
    """Every form against plain PAR: widths that are and are not multiples of 16, 1 to 6 maps."""
    if form == "native" and device.type != "cpu":
        pytest.skip("the native form is CPU-only")
    image = realistic_image(2, 40, 50)
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand(2, maps, *size, generator=generator)
    fast, plain = PAR(num_iter=20, form=form).to(device), StraightforwardPAR(num_iter=20)
    out, expected = fast(image.to(device), masks.to(device)).cpu(), plain(image, masks)
    assert out.shape == masks.shape and out.dtype == masks.dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # The batched sparse propagation and the loops sum in different orders: a near-tie may break either way,
    # so the winning class is compared where the reference's top-2 margin exceeds float32 rounding noise.
    if maps > 1:                                # with one map there is no winner to compare
        top2 = expected.topk(2, dim=1).values
        decided = (top2[:, 0] - top2[:, 1]) > 1e-4
        assert decided.float().mean() > 0.99
        assert torch.equal(out.argmax(dim=1)[decided], expected.argmax(dim=1)[decided])


def test_par_affinity_matches_straightforward_version():
    image = torch.nn.functional.interpolate(realistic_image(2, 40, 50, seed=1), size=(33, 41), mode="bilinear",
                                            align_corners=True)
    fast, plain = PAR(), StraightforwardPAR()
    order = [fast.offsets.index(offset) for offset in plain.offsets]
    torch.testing.assert_close(fast.affinity(image)[:, order], plain.affinity(image), rtol=0, atol=1e-6)
    constant = torch.full((1, 3, 9, 9), 0.5)  # zero spread everywhere: every neighbour equally weighted
    torch.testing.assert_close(fast.affinity(constant)[:, order], plain.affinity(constant), rtol=0, atol=1e-7)


def test_par_half_masks_computed_in_float32():
    image = realistic_image(1, 16, 16)
    masks = torch.rand(1, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    par = PAR(num_iter=4)
    out = par(image, masks.half())
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), par(image, masks.half().float()), rtol=0, atol=1e-3)


def test_par_propagation_pattern_is_built_once_per_size():
    par = PAR(num_iter=1)
    weights = par.affinity(torch.rand(2, 3, 12, 14))
    first, second = par.propagation_matrix(weights), par.propagation_matrix(weights * 2)
    assert first.col_indices().data_ptr() == second.col_indices().data_ptr()
    assert first.crow_indices().data_ptr() == second.crow_indices().data_ptr()
    assert first.shape == (2 * 12 * 14, 2 * (12 + 48) * (14 + 48))
    columns = first.col_indices().view(-1, 48).long()
    assert bool((columns[:, 1:] > columns[:, :-1]).all())  # CSR rows with increasing columns
    assert torch.equal(first.values(), weights.permute(0, 2, 3, 1).reshape(-1))


def test_par_rejects_repeated_dilations():
    with pytest.raises(ValueError, match="distinct"):
        PAR(dilations=(1, 2, 2))


@NATIVE
def test_native_affinity_matches_straightforward_version():
    image = torch.nn.functional.interpolate(realistic_image(2, 40, 50, seed=1), size=(33, 41), mode="bilinear",
                                            align_corners=True)
    fast, plain = PAR(), StraightforwardPAR()
    order = [fast.offsets.index(offset) for offset in plain.offsets]
    padded = torch.nn.functional.pad(image, [fast.margin] * 4, mode="replicate").contiguous()
    weights = native_affinity(padded, fast.margin, torch.tensor(fast.offsets), 0.3, 1e-8, fast.position_affinity)
    assert weights.shape == (2, 33, 48, 41)  # B×H×M×W
    torch.testing.assert_close(weights.permute(0, 2, 1, 3)[:, order], plain.affinity(image), rtol=0, atol=1e-6)


def test_par_auto_form_per_device_and_dtype():
    par = PAR()
    expected_cpu = "native" if load_kernels() is not None else "sparse"
    assert par.resolve_form(torch.device("cpu"), torch.float32) == expected_cpu
    assert par.resolve_form(torch.device("cpu"), torch.float64) == "sparse"
    assert par.resolve_form(torch.device("cuda"), torch.float32) == "gather"
    assert PAR(form="sparse").resolve_form(torch.device("cpu"), torch.float32) == "sparse"
    with pytest.raises(ValueError, match="form"):
        PAR(form="csr")


@pytest.fixture()
def fresh_kernels(monkeypatch, tmp_path):
    """load_kernels() with an empty cache folder, its memo cleared before and after."""
    monkeypatch.setenv(par_native.CACHE_ENV, str(tmp_path))
    load_kernels.cache_clear()
    yield tmp_path
    load_kernels.cache_clear()


def test_par_without_native_kernels_falls_back_to_sparse(fresh_kernels, monkeypatch):
    monkeypatch.setenv(par_native.SWITCH_ENV, "0")
    assert load_kernels() is None
    assert PAR().resolve_form(torch.device("cpu"), torch.float32) == "sparse"
    image, masks = realistic_image(1, 12, 12), torch.rand(1, 2, 12, 12)
    torch.testing.assert_close(PAR(num_iter=3)(image, masks), StraightforwardPAR(num_iter=3)(image, masks),
                               rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match="not available"):
        PAR(form="native")(image, masks)
    assert not any(fresh_kernels.iterdir())


def test_failed_kernel_build_warns_and_leaves_nothing(fresh_kernels, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with pytest.warns(UserWarning, match="portable torch form"):
        assert load_kernels() is None
    assert not any(fresh_kernels.iterdir())


@NATIVE
def test_native_kernels_are_built_once_and_reused(fresh_kernels):
    assert load_kernels() is not None
    built = list(fresh_kernels.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    load_kernels.cache_clear()
    assert load_kernels() is not None
    assert list(fresh_kernels.iterdir()) == built and built[0].stat().st_mtime_ns == stamp


@NATIVE
def test_native_kernels_reject_other_dtypes():
    with pytest.raises(ValueError, match="float32"):
        native_affinity(torch.rand(1, 3, 10, 10, dtype=torch.float64), 1, torch.tensor([[0, 1]]), 0.3, 1e-8,
                        torch.ones(1))


@NATIVE
@pytest.mark.parametrize("batch, threads", [(2, 2), (3, 2), (1, 2)])
def test_native_par_with_threads_per_image_and_per_row(batch, threads):
    """Images split among the threads (batch 2) and rows of each image split among them (batch 3, 1)."""
    image = realistic_image(batch, 30, 37, seed=4)
    masks = torch.rand(batch, 5, 30, 37, generator=torch.Generator().manual_seed(4))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = PAR(num_iter=7, form="native")(image, masks)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(out, StraightforwardPAR(num_iter=7)(image, masks), rtol=0, atol=1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_par_counts_skip_zero_padding_maps(form):
    """Maps past an image's count are zero padding: they stay zero and the real maps are unchanged."""
    image = realistic_image(3, 24, 40, seed=6)
    masks = torch.rand(3, 4, 24, 40, generator=torch.Generator().manual_seed(6))
    counts = torch.tensor([4, 2, 1])
    masks[1, 2:] = 0
    masks[2, 1:] = 0
    par = PAR(num_iter=5, form=form)  # odd: the native result lies in its second buffer
    out = par(image, masks, counts)
    torch.testing.assert_close(out, StraightforwardPAR(num_iter=5)(image, masks), rtol=0, atol=1e-5)
    assert not out[1, 2:].any() and not out[2, 1:].any()


@NATIVE
def test_native_par_rejects_counts_out_of_range():
    image, masks = realistic_image(2, 8, 8), torch.rand(2, 3, 8, 8)
    for counts in (torch.tensor([4, 1]), torch.tensor([-1, 1]), torch.tensor([1, 1, 1])):
        with pytest.raises(ValueError, match="counts"):
            PAR(num_iter=1, form="native")(image, masks, counts)


@NATIVE
def test_native_par_reuses_its_weight_storage_without_touching_earlier_results():
    """The weights buffer is kept across calls (grown for larger inputs); results never alias it."""
    par = PAR(num_iter=4, form="native")
    small_image, small_masks = realistic_image(1, 20, 24, seed=8), torch.rand(1, 3, 20, 24)
    large_image, large_masks = realistic_image(2, 30, 36, seed=9), torch.rand(2, 3, 30, 36)
    small = par(small_image, small_masks)
    kept = small.clone()
    storage = par._native_storage
    assert storage.numel() == 1 * 20 * 24 * 48
    large = par(large_image, large_masks)
    assert par._native_storage.numel() == 2 * 30 * 36 * 48          # grown for the larger input
    assert torch.equal(small, kept)                                 # the first result is untouched
    again = par(small_image, small_masks)
    assert par._native_storage.numel() == 2 * 30 * 36 * 48          # not shrunk: reused
    assert torch.equal(again, kept)
    torch.testing.assert_close(large, StraightforwardPAR(num_iter=4)(large_image, large_masks), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="storage"):
        native_affinity(torch.rand(1, 3, 10, 10), 1, torch.tensor([[0, 1]]), 0.3, 1e-8, torch.ones(1),
                        torch.empty(10))


@NATIVE
def test_native_par_leaves_the_callers_subnormal_numbers_alone():
    """The kernels flush subnormal numbers to zero for speed, then restore the thread's floating-point state."""
    tiny = torch.tensor([1e-39])                        # below FLT_MIN: a subnormal float32
    assert (tiny * 1.5).item() > 0
    image = realistic_image(2, 24, 24, seed=2)
    masks = torch.zeros(2, 2, 24, 24)
    masks[:, 0, :4, :4] = 1e-30                         # products with small weights fall below FLT_MIN
    masks[:, 1] = 1.0
    out = PAR(num_iter=3, form="native")(image, masks)
    torch.testing.assert_close(out, StraightforwardPAR(num_iter=3)(image, masks), rtol=0, atol=1e-6)
    assert (tiny * 1.5).item() > 0


def test_gather_index_is_int32_on_the_device_and_points_at_each_neighbour():
    """Every entry of the gather form's index against the padded-plane position written out per pixel."""
    from excel.labels.par import _gather_index

    offsets, margin, height, width = ((-1, 0), (2, -2), (0, 1)), 2, 3, 4
    index = _gather_index(height, width, offsets, margin, torch.device("cpu"))
    assert index.dtype == torch.int32 and index.device.type == "cpu"
    expected = [(y + margin + dy) * (width + 2 * margin) + (x + margin + dx)
                for dy, dx in offsets for y in range(height) for x in range(width)]
    assert index.tolist() == expected
