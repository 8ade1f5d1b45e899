"""VOC palette, palette PNGs, colour label maps and heat-map overlays."""
import numpy as np
import pytest
from PIL import Image

from excel.io import voc_palette, write_mask
from excel.utils.visualize import cam_overlay, colorize, label_overlay


def reference_palette() -> list[tuple[int, int, int]]:
    """The VOC colour map: bit b of channel c of entry i is bit (3·k + c) of i, placed at bit 7 − k."""
    colours = []
    for index in range(256):
        rgb = [0, 0, 0]
        for k in range(8):
            for channel in range(3):
                if index & (1 << (3 * k + channel)):
                    rgb[channel] |= 1 << (7 - k)
        colours.append(tuple(rgb))
    return colours


def test_voc_palette():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert [tuple(map(int, c)) for c in palette] == reference_palette()
    assert tuple(palette[0]) == (0, 0, 0) and tuple(palette[1]) == (128, 0, 0)
    assert tuple(palette[15]) == (192, 128, 128) and tuple(palette[255]) == (224, 224, 192)


def test_save_label_png_round_trip(tmp_path):
    label = np.array([[0, 1, 2], [20, 255, 7]], dtype=np.int64)
    path = tmp_path / "out" / "x.png"
    write_mask(path, label)
    with Image.open(path) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), label)
        assert np.array_equal(np.array(image.getpalette()[:768]).reshape(256, 3), voc_palette())
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]


def test_save_label_png_custom_palette_and_bad_input(tmp_path):
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[3] = (1, 2, 3)
    write_mask(tmp_path / "c.png", np.full((2, 2), 3), palette)
    with Image.open(tmp_path / "c.png") as image:
        assert image.getpalette()[9:12] == [1, 2, 3]
    with pytest.raises(ValueError, match="H×W"):
        write_mask(tmp_path / "bad.png", np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="0..255"):
        write_mask(tmp_path / "bad.png", np.array([[256]]))
    assert not (tmp_path / "bad.png").exists()


def test_colorize_and_label_overlay():
    label = np.array([[0, 1], [15, 255]])
    colours = colorize(label)
    palette = reference_palette()
    for y in range(2):
        for x in range(2):
            assert tuple(colours[y, x]) == palette[label[y, x]]
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    np.testing.assert_array_equal(label_overlay(image, label, alpha=1.0), colours)
    np.testing.assert_array_equal(label_overlay(image, label, alpha=0.0), image)
    half = label_overlay(image, label, alpha=0.5).astype(int)
    assert np.abs(half - (image.astype(int) + colours) / 2).max() <= 1


def test_cam_overlay():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[:, :3] = 200
    cam = np.zeros((4, 6))
    cam[:, 3:] = 1.0
    heat = cam_overlay(image, cam, alpha=1.0)
    assert heat.shape == (4, 6, 3) and heat.dtype == np.uint8
    cold, hot = heat[0, 0].astype(int), heat[0, 5].astype(int)
    assert cold[2] > 100 and cold[0] == 0          # jet: 0 → dark blue
    assert hot[0] > 100 and hot[2] == 0            # jet: 1 → dark red
    np.testing.assert_array_equal(cam_overlay(image, cam, alpha=0.0), image)
    with pytest.raises(ValueError, match="image must be H×W×3"):
        cam_overlay(image[:2], cam)


def test_legend_overlay_lists_the_present_classes_below_the_overlay():
    from excel.utils.visualize import LEGEND_ROW, LEGEND_SWATCH, legend_overlay

    gen = np.random.default_rng(0)
    image = gen.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    label = np.zeros((30, 40), np.uint8)
    label[5:15, 5:15], label[20:, 30:] = 3, 5
    names = ["background", "a", "b", "kettle", "d", "teapot"]
    canvas = legend_overlay(image, label, names)
    np.testing.assert_array_equal(canvas[:30, :40], label_overlay(image, label))
    assert canvas.shape[0] == 30 + 3 * LEGEND_ROW + 4 and canvas.shape[1] >= 40
    palette = voc_palette()
    for row, c in enumerate([0, 3, 5]):                    # swatch centres carry the class colours, in order
        top = 30 + 4 + row * LEGEND_ROW
        centre = canvas[top + LEGEND_SWATCH // 2, 4 + LEGEND_SWATCH // 2]
        np.testing.assert_array_equal(centre, palette[c])
        text = canvas[top:top + LEGEND_SWATCH, LEGEND_ROW + 4:]
        assert (text < 128).any()                          # a name is written beside each swatch
