"""The Broden layout (reader, writer, bad folders) and the Fashion-MNIST concept set written in it."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zfviz.dissection import Broden, BrodenItem, Label, concepts, write_broden
from zfviz.dissection.broden import main_category
from zfviz.errors import UserError


def rgb_mask(labels: np.ndarray) -> Image.Image:
    """Broden's encoding written by hand: R = label % 256, G = label // 256."""
    return Image.fromarray(np.stack([labels % 256, labels // 256, 0 * labels], -1).astype(np.uint8), "RGB")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# Labels 1 (red), 2 (car), 257 (wheel: needs G = 1), 300 (beach), 301 (striped).
MASK_A = np.array([[0, 2, 2], [257, 257, 0]])  # object/part labels of image a, 2 x 3
MASK_B = np.array([[1, 1, 1], [1, 0, 1]])  # color


@pytest.fixture
def broden_dir(tmp_path: Path) -> Path:
    """Two images in the real layout: pixel categories color/object/part, image-level scene/texture."""
    root = tmp_path / "broden"
    write(root / "category.csv", "name,first,last,count,frequency\ncolor,1,1,1,1\nobject,2,2,1,1\n"
          "part,257,257,1,1\nscene,300,300,1,2\ntexture,301,301,1,1\n")  # fmt: skip
    write(root / "label.csv", "number,name,category,frequency,coverage,syns\n1,red,color(1),1,0.8,\n"
          "2,car,object(5);part(2),1,0.3,auto\n257,wheel,object(1);part(4),1,0.3,\n300,beach,scene(2),2,2.0,\n"
          "301,striped,texture(1),1,1.0,\n")  # fmt: skip
    for category, rows in {"color": "1,1,red", "object": "1,2,car", "part": "1,257,wheel",
                           "scene": "1,300,beach", "texture": "1,301,striped"}.items():  # fmt: skip
        write(root / f"c_{category}.csv", f"code,number,name,frequency,coverage\n{rows},1,0.5\n")
    (root / "images" / "src").mkdir(parents=True)
    Image.fromarray(np.full((4, 6, 3), 7, np.uint8)).save(root / "images" / "src" / "a.png")
    Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)).save(root / "images" / "src" / "b.png")
    rgb_mask(MASK_A).save(root / "images" / "src" / "a_object.png")
    palette = rgb_mask(MASK_B).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)  # a palette PNG reads right too
    palette.save(root / "images" / "src" / "b_color.png")
    write(root / "index.csv", "image,split,ih,iw,sh,sw,color,object,part,scene,texture\n"
          "src/a.png,train,4,6,2,3,,src/a_object.png,src/a_object.png;2,300,\n"
          "src/b.png,val,4,6,2,3,src/b_color.png,,,300,301\n")  # fmt: skip
    return root


def test_reader_decodes_r_plus_256g_and_image_labels(broden_dir: Path):
    b = Broden(broden_dir)
    assert len(b) == 2 and b.mask_size() == (2, 3)
    assert b.categories == ["color", "object", "part", "scene", "texture"]
    assert b.pixel_categories == ["color", "object", "part"] and b.image_categories == ["scene", "texture"]
    assert b.labels[2] == Label(2, "car", "object") and b.labels[257] == Label(257, "wheel", "part")
    assert b.category_labels == {"color": [1], "object": [2], "part": [257], "scene": [300], "texture": [301]}
    a = b[0]
    assert a.split == "train" and a.image.dtype == torch.uint8 and a.image.shape == (3, 4, 6)
    assert (a.image == 7).all()
    assert set(a.masks) == {"object", "part"} and a.image_labels == {"scene": [300]}
    assert a.masks["object"][0].dtype == torch.int64
    assert a.masks["object"][0].tolist() == MASK_A.tolist()
    part, whole = a.masks["part"]  # a mask file, then a number: that label on every pixel
    assert part.tolist() == MASK_A.tolist() and whole.tolist() == [[2, 2, 2], [2, 2, 2]]
    second = b[1]
    assert second.split == "val" and second.masks["color"][0].tolist() == MASK_B.tolist()
    assert second.image_labels == {"scene": [300], "texture": [301]}
    assert second.image.permute(1, 2, 0).flatten().tolist() == list(range(72))


def test_an_empty_column_category_csv_does_not_list_is_read_as_netdissect_reads_it(broden_dir: Path):
    # The released broden1_224 index.csv has a column per category of the union; category.csv lists only
    # the categories with labels, so the extra column is empty in every row.
    before = Broden(broden_dir)
    break_index(broden_dir, "texture\n", "texture,material\n")
    break_index(broden_dir, ",300,\n", ",300,,\n")
    break_index(broden_dir, ",301\n", ",301,\n")
    after = Broden(broden_dir)
    assert after.categories == before.categories
    assert [after[i].masks.keys() for i in range(2)] == [before[i].masks.keys() for i in range(2)]
    assert [after[i].image_labels for i in range(2)] == [before[i].image_labels for i in range(2)]


def test_main_category_takes_the_largest_count():
    assert main_category("material(36);object(3)") == "material"
    assert main_category("object(3);part(4)") == "part"
    assert main_category("object") == "object" and main_category("") == ""


def break_index(root: Path, old: str, new: str) -> None:
    (root / "index.csv").write_text((root / "index.csv").read_text().replace(old, new))


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda r: os.remove(r / "index.csv"), "has no index.csv"),
        (
            lambda r: os.remove(r / "images" / "src" / "b_color.png"),
            "mask file {root}/images/src/b_color.png is missing",
        ),
        (lambda r: os.remove(r / "images" / "src" / "a.png"), "image file {root}/images/src/a.png is missing"),
        (lambda r: os.remove(r / "c_part.csv"), "category 'part' has no labels: {root}/c_part.csv is missing"),
        (lambda r: write(r / "c_scene.csv", "code,number,name\n"), "category 'scene' has no labels"),
        (
            lambda r: break_index(break_index(r, "texture\n", "texture,material\n") or r, ",300,\n", ",300,,7\n"),
            "line 2: column 'material' holds labels but is not a category of category.csv",
        ),
        (lambda r: break_index(r, ",300,\n", ",999,\n"), "line 2: label 999 in 'scene' is not in label.csv"),
        (lambda r: os.remove(r / "label.csv"), "{root}/label.csv is missing"),
        (lambda r: break_index(r, "sh,sw", "sh,size"), "has no column sw"),
    ],
)
def test_bad_layouts_are_one_line_naming_the_problem(broden_dir: Path, damage, expected: str):
    damage(broden_dir)
    with pytest.raises(UserError) as err:
        Broden(broden_dir)
    assert expected.format(root=broden_dir) in str(err.value) and "\n" not in str(err.value)


def test_a_mask_of_the_wrong_size_is_named_when_read(broden_dir: Path):
    rgb_mask(np.zeros((3, 3), int)).save(broden_dir / "images" / "src" / "b_color.png")
    b = Broden(broden_dir)
    b[0]
    with pytest.raises(UserError, match=r"b_color.png is 3x3 but index.csv line 3 gives sh x sw = 2x3"):
        b[1]


def test_a_missing_folder_is_one_line(tmp_path: Path):
    with pytest.raises(UserError, match="Broden folder .* does not exist"):
        Broden(tmp_path / "nowhere")


LABELS = [Label(1, "red", "color"), Label(2, "blue", "color"), Label(300, "cat", "object"), Label(7, "beach", "scene")]


def items() -> list[BrodenItem]:
    image = torch.arange(3 * 4 * 5, dtype=torch.uint8).reshape(3, 4, 5)
    color = torch.tensor([[1, 1], [2, 0]])
    cat = torch.tensor([[300, 0], [0, 0]])
    return [
        BrodenItem(image, {"color": [color], "object": [cat, cat * 0]}, {"scene": [7]}),
        BrodenItem(image.flip(1), {"color": [torch.full((2, 2), 2)]}, {}, split="val"),
        BrodenItem(image, {}, {"scene": [7]}),  # no masks: the first mask size stands in
    ]


def test_round_trip_and_statistics(tmp_path: Path):
    root = write_broden(tmp_path / "out", items(), LABELS, ["color", "object", "scene"])
    b = Broden(root)
    assert len(b) == 3 and b.mask_size() == (2, 2)
    assert b.pixel_categories == ["color", "object"] and b.image_categories == ["scene"]
    assert b.labels[300] == Label(300, "cat", "object")
    for got, want in zip((b[i] for i in range(3)), items(), strict=True):
        assert torch.equal(got.image, want.image) and got.split == want.split
        assert got.image_labels == want.image_labels
        assert {k: [m.tolist() for m in v] for k, v in got.masks.items()} == {
            k: [m.tolist() for m in v] for k, v in want.masks.items()
        }
    with open(root / "label.csv") as f:
        rows = {int(r["number"]): r for r in csv.DictReader(f)}
    # red: image 0 only, 2 of 4 pixels; blue: images 0 (1/4) and 1 (4/4); beach: images 0 and 2, whole images
    assert (rows[1]["frequency"], rows[1]["coverage"], rows[1]["category"]) == ("1", "0.500000", "color(1)")
    assert (rows[2]["frequency"], rows[2]["coverage"]) == ("2", "1.250000")
    assert (rows[300]["frequency"], rows[300]["coverage"]) == ("1", "0.250000")
    assert (rows[7]["frequency"], rows[7]["coverage"]) == ("2", "2.000000")
    assert (root / "category.csv").read_text().splitlines() == [
        "name,first,last,count,frequency", "color,1,2,2,2", "object,300,300,1,1", "scene,7,7,1,2",
    ]  # fmt: skip
    assert (root / "c_color.csv").read_text().splitlines()[1:] == ["1,1,red,1,0.500000", "2,2,blue,2,1.250000"]
    assert "masks/000000_object.png;masks/000000_object_1.png" in (root / "index.csv").read_text()
    assert Image.open(root / "images" / "masks" / "000000_object.png").mode == "RGB"


def test_write_is_all_or_nothing(tmp_path: Path):
    def failing():
        yield items()[0]
        raise RuntimeError("disk trouble")

    with pytest.raises(RuntimeError):
        write_broden(tmp_path / "out", failing(), LABELS, ["color", "object", "scene"])
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary twin
    write_broden(tmp_path / "out", items(), LABELS, ["color", "object", "scene"])
    with pytest.raises(UserError, match="exists already"):
        write_broden(tmp_path / "out", items(), LABELS, ["color", "object", "scene"])


# --- the concept set -------------------------------------------------------------------------


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_concepts_are_deterministic_and_cached(fmnist_dir: Path, tmp_path: Path):
    a = concepts.build_concepts(tmp_path / "a", count=8, seed=3, source=str(fmnist_dir))
    b = concepts.build_concepts(tmp_path / "b", count=8, seed=3, source=str(fmnist_dir))
    c = concepts.build_concepts(tmp_path / "c", count=8, seed=4, source=str(fmnist_dir))
    assert tree_bytes(a) == tree_bytes(b)
    assert tree_bytes(a)["images/000000.png"] != tree_bytes(c)["images/000000.png"]
    stamp = (a / "index.csv").stat().st_mtime_ns
    assert concepts.build_concepts(a, count=8, seed=3, source=str(fmnist_dir)) == a  # built already: kept
    assert (a / "index.csv").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="not a concept set built with"):
        concepts.build_concepts(a, count=9, seed=3, source=str(fmnist_dir))


def test_concept_masks_match_the_placed_item(fmnist_dir: Path, tmp_path: Path):
    from zfviz.data.fashion_mnist import load_split

    root = concepts.build_concepts(tmp_path / "c", count=12, seed=0, source=str(fmnist_dir))
    sources = load_split(fmnist_dir, "test")[0].numpy()
    with open(root / "items.csv") as f:
        placed = list(csv.DictReader(f))
    b = Broden(root)
    assert b.categories == list(concepts.CATEGORIES) and b.mask_size() == (64, 64)
    number = {(label.category, label.name): label.number for label in b.labels.values()}
    checked = 0
    for i in range(len(b)):
        rows = [r for r in placed if r["image"] == f"{i:06d}.png"]
        item = b[i]
        expected_object = np.zeros((64, 64), np.int64)
        expected_color = np.full((64, 64), number["color", rows[0]["background"]])
        for r in rows:
            top, left, side = int(r["top"]), int(r["left"]), int(r["side"])
            grid = np.arange(side) * 28 // side  # nearest neighbour, by hand
            sil = sources[int(r["source"])][np.ix_(grid, grid)] > 32
            expected_object[top : top + side, left : left + side][sil] = number["object", r["class"]]
            expected_color[top : top + side, left : left + side][sil] = number["color", r["color"]]
        assert item.masks["object"][0].numpy().tolist() == expected_object.tolist()
        assert item.masks["color"][0].numpy().tolist() == expected_color.tolist()
        scene = (
            "single-item"
            if len(rows) == 1
            else ("matched-pair" if rows[0]["class"] == rows[1]["class"] else "mixed-pair")
        )
        assert item.image_labels["scene"] == [number["scene", scene]]
        assert item.image_labels.get("texture") == (
            [number["texture", rows[0]["texture"]]] if rows[0]["texture"] else None
        )
        background = (expected_object == 0) & (rows[0]["texture"] == "")
        rgb = item.image.permute(1, 2, 0).numpy()
        assert (rgb[background] == concepts.COLORS[rows[0]["background"]]).all()
        checked += 1
    assert checked == 12


def test_smaller_masks_sample_the_canvas(fmnist_dir: Path, tmp_path: Path):
    full = Broden(concepts.build_concepts(tmp_path / "f", count=3, source=str(fmnist_dir)))
    half = Broden(concepts.build_concepts(tmp_path / "h", count=3, mask_size=32, source=str(fmnist_dir)))
    assert half.mask_size() == (32, 32)
    assert torch.equal(half[1].masks["object"][0], full[1].masks["object"][0][1::2, 1::2])
    assert torch.equal(half[1].image, full[1].image)


def test_part_rules_on_hand_made_items():
    part = {name: concepts.LABELS["part", name] for name in concepts.PARTS}
    block = np.zeros((28, 28), np.uint8)
    block[10:20, 2:26] = 200  # a sneaker-like slab: toe on the left, heel on the right
    sneaker = concepts.part_map(block, concepts.OBJECTS.index("sneaker"))
    assert (sneaker[17:20, 2:26] == part["sole"]).all()  # the lowest 3 pixels of each column
    assert (sneaker[10:17, 2:10] == part["toe"]).all() and (sneaker[10:17, 19:26] == part["heel"]).all()
    assert (sneaker[10:17, 10:19] == 0).all() and (sneaker[block == 0] == 0).all()
    bag = np.zeros((28, 28), np.uint8)
    bag[3:8, 12:16] = 200  # a handle, 4 wide
    bag[8:24, 4:24] = 200  # the body, 20 wide
    bag_parts = concepts.part_map(bag, concepts.OBJECTS.index("bag"))
    assert (bag_parts == part["handle"]).sum() == 20 and (bag_parts[3:8, 12:16] == part["handle"]).all()
    shirt = concepts.part_map(np.full((28, 28), 255, np.uint8), concepts.OBJECTS.index("shirt"))
    assert (shirt[6:, :8] == part["sleeve"]).all() and (shirt[:6, :8] == part["torso"]).all()
    assert (shirt[:, 8:20] == part["torso"]).all()
    assert not concepts.part_map(bag, concepts.OBJECTS.index("dress")).any()


def test_missing_fashion_mnist_is_one_line(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no Fashion-MNIST IDX files in"):
        concepts.build_concepts(tmp_path / "c", count=2, source=str(tmp_path / "empty"))
    assert not (tmp_path / "c").exists()


def test_command_line(fmnist_dir: Path, tmp_path: Path, capsys):
    assert concepts.main([str(tmp_path / "c"), "--count", "2", "--source", str(fmnist_dir)]) == 0
    assert len(Broden(tmp_path / "c")) == 2
    assert concepts.main([str(tmp_path / "d"), "--count", "0", "--source", str(fmnist_dir)]) == 2
    assert "count=0 is not valid" in capsys.readouterr().err


def test_a_folder_written_meanwhile_is_kept(tmp_path: Path):
    def racing():
        yield items()[0]
        (tmp_path / "out").mkdir()  # another writer finished first
        (tmp_path / "out" / "theirs").write_text("x")

    with pytest.raises(UserError, match="exists already"):
        write_broden(tmp_path / "out", racing(), LABELS, ["color", "object", "scene"])
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out" / "theirs").exists()


def test_a_parallel_build_of_the_same_set_is_accepted(fmnist_dir: Path, tmp_path: Path, monkeypatch):
    real = concepts.write_broden

    def twice(root, *args, **kwargs):  # the same set lands in root just before our rename
        real(root, *args, **kwargs)
        return real(root, *args, **kwargs)

    monkeypatch.setattr(concepts, "write_broden", twice)
    root = concepts.build_concepts(tmp_path / "c", count=2, source=str(fmnist_dir))
    assert len(Broden(root)) == 2
