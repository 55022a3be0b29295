"""The grounded demo world (issue 13 §1): pictures of counted, coloured shapes, captions that name them
on the side the build attaches each picture to, and the rest of the page where no picture looks."""

from __future__ import annotations

import io
import random
from collections import Counter
from urllib.parse import urlsplit

import pytest
from PIL import Image

from m3w_builder.attach import page_draw, sample
from m3w_builder.document import Document, ImageNode, TextNode, document_key
from pipelines.demo.grounded import (
    COUNTS,
    GROUNDS,
    SHAPES,
    Scene,
    caption,
    draw_scene,
    random_scene,
)
from pipelines.demo.sample_site import make_site


def test_scenes_decode_and_differ_with_the_same_attributes():
    rng = random.Random(0)
    scene = Scene("red", "triangle", 3)
    first, second = draw_scene(scene, rng), draw_scene(scene, rng)
    assert first != second  # positions, sizes, background and noise vary
    for data in (first, second):
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and min(im.size) >= 64
            assert max(im.convert("L").getextrema()) - min(im.convert("L").getextrema()) > 50


def test_phrase_and_attributes_agree():
    assert Scene("blue", "star", 1).phrase() == "one blue star"
    assert Scene("blue", "star", 4).phrase() == "four blue stars"
    assert Scene("green", "circle", 2).attributes == {
        "colour": "green",
        "shape": "circle",
        "count": "two",
    }
    rng = random.Random(1)
    drawn = {random_scene(rng) for _ in range(400)}
    assert {s.shape for s in drawn} == set(SHAPES) and {s.count for s in drawn} == {1, 2, 3, 4}
    assert {s.ground for s in drawn} == set(GROUNDS)
    assert (
        caption(Scene("red", "star", 2, "mint"), 3)
        == "Figure 3 shows two red stars on a mint ground."
    )
    assert len(COUNTS) == 4


def test_page_draw_is_what_sample_gives_every_image_per_document():
    for i in range(40):
        url = f"http://127.0.0.1:8000/pages/{i:03d}.html"
        doc = Document(url=url, nodes=[TextNode("a"), ImageNode(src="x"), ImageNode(src="y")])
        drawn = sample(doc, seed=7, mode="per-document", p_next=0.5)
        expected = page_draw(document_key(url), seed=7, p_next=0.5)
        assert {n.attach for n in drawn.nodes if isinstance(n, ImageNode)} == {expected}


def test_a_grounded_site_puts_each_caption_on_the_attached_side(tmp_path):
    base = "http://127.0.0.1:8123"
    info = make_site(tmp_path, pages=30, seed=3, grounded=True, base_url=base, attach_seed=5)
    assert info.good_images == len(info.scenes) > 30
    captions = [scene["caption"] for scene in info.scenes.values()]
    # the build drops a paragraph repeated 3 times in one domain as boilerplate
    assert max(Counter(captions).values()) < 3
    sides = set()
    for src, scene in info.scenes.items():
        page = (tmp_path / scene["page"]).read_text()
        expected = page_draw(document_key(f"{base}/{scene['page']}"), seed=5)
        assert scene["attach"] == expected
        picture, said = page.index(f'src="{src}"'), page.index(scene["caption"])
        assert (said > picture) == (expected == "following")
        sides.add(expected)
        assert Scene(**_scene_args(scene["attributes"])).phrase() in scene["caption"]
    assert sides == {"following", "preceding"}
    # the copied page copies a page with the same draw, so either copy is captioned right
    (dup,) = info.duplicate_pages
    dup_draw = page_draw(document_key(f"{base}/{dup}"), seed=5)
    same = [p for p in info.pages if (tmp_path / p).read_text() == (tmp_path / dup).read_text()]
    assert len(same) == 2
    assert {page_draw(document_key(f"{base}/{p}"), seed=5) for p in same} == {dup_draw}


def test_a_grounded_site_needs_its_base_url(tmp_path):
    with pytest.raises(ValueError, match="base_url"):
        make_site(tmp_path, grounded=True)


def _scene_args(attributes: dict[str, str]) -> dict:
    return {
        "colour": attributes["colour"],
        "shape": attributes["shape"],
        "count": COUNTS.index(attributes["count"]) + 1,
    }


@pytest.mark.slow
def test_the_build_attaches_every_picture_to_its_caption(tmp_path):
    """Served on 127.0.0.1 and built with the local Ray: every stored picture carries the draw the
    site was written for, and the text on its attached side next to it is its caption."""
    pytest.importorskip("ray")
    from m3w_builder.config import BuildConfig
    from m3w_builder.shards import iter_shard
    from pipelines.build.job import JobOptions, run_build
    from pipelines.demo.sample_site import serve_site, write_url_list

    site = tmp_path / "site"
    site.mkdir()
    config = BuildConfig.for_profile("m3w")
    config.fetch.allowed_hosts = ["127.0.0.1"]
    config.seed = 11
    with serve_site(site) as base_url:
        info = make_site(site, pages=16, seed=2, grounded=True, base_url=base_url, attach_seed=11)
        urls = write_url_list(site, base_url, site / "urls.txt")
        options = JobOptions(out=str(tmp_path / "job"), num_cpus=1, progress=False)
        run_build([str(urls)], config, options)
    checked = 0
    for shard in sorted((tmp_path / "job" / "shards").glob("*.tar")):
        for s in iter_shard(shard):
            texts, images = s.record["texts"], s.record["images"]
            for i, image in enumerate(images):
                scene = image and info.scenes.get(urlsplit(image["src"]).path)
                if not scene:
                    continue
                assert image["attach"] == scene["attach"]
                if image["attach"] == "following":  # the text right after it opens with it
                    assert texts[i + 1] is not None and texts[i + 1].startswith(scene["caption"])
                else:  # the text right before it closes with it
                    assert texts[i - 1] is not None and texts[i - 1].endswith(scene["caption"])
                checked += 1
    assert checked >= 0.8 * info.good_images
