"""The README's main job on a small scale: sample media -> streams -> tokens -> files, with a report."""

import io
import json

from PIL import Image

from shared.samples.photos import sample_crops
from shared.tools.roundtrip import parse_args, round_trip


def main(argv: list[str]) -> dict:
    return round_trip(parse_args(argv))


def test_round_trip_on_sample_media(tmp_path) -> None:
    report = main(["--out", str(tmp_path), "--num-images", "12", "--num-videos", "2", "--image-vocab", "300",
                   "--video-vocab", "400"])
    for modality, suffix in (("image", ".jpg"), ("video", ".mp4")):
        figures = report[modality]
        assert (figures["inputs"] == figures["encoded"] == figures["token_round_trip_exact"]
                == figures["decoded_cleanly"])
        assert figures["compression_vs_raw_pixels"] > 10 and figures["psnr_db_mean"] > 25
        assert len(list((tmp_path / modality / "files").glob(f"*{suffix}"))) == figures["encoded"]
        with Image.open(tmp_path / modality / "sheet.png") as sheet:
            assert sheet.width > 200 and sheet.height > 100
    assert report["image"]["vocab_size"] == 300
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))


def test_bad_files_are_rejected_and_counted(tmp_path) -> None:
    sources = tmp_path / "in"
    sources.mkdir()
    for key, png in sample_crops(4):
        (sources / f"{key}.png").write_bytes(png)
    (sources / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    (sources / "empty.png").write_bytes(b"")
    report = main(["--out", str(tmp_path / "out"), "--modality", "image", "--images", str(sources / "*"),
                   "--image-profile", "jpeg-64-q25", "--image-vocab", "260"])
    assert report["image"]["inputs"] == 6 and report["image"]["encoded"] == 4
    assert report["image"]["rejected"] == {"unreadable": 1, "empty": 1}
    lines = [json.loads(line) for line in (tmp_path / "out" / "image" / "rejected.jsonl").read_text().splitlines()]
    assert sorted(line["reason"] for line in lines) == ["empty", "unreadable"]
    with Image.open(io.BytesIO((tmp_path / "out" / "image" / "files" / "astronaut-00000.jpg").read_bytes())) as image:
        assert image.size == (64, 64)
