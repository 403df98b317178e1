import zipfile
from pathlib import Path

from workers.artifacts import _zip_folder


def test_student_zip_stores_weights_and_deflates_text(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    (folder / "onnx").mkdir(parents=True)
    files = {
        "model.safetensors": bytes(range(256)) * 64,
        "onnx/model.onnx": b"\x00\x01" * 4096,
        "tokenizer.json": b'{"vocab": "aaaa"}' * 512,
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    target = tmp_path / "student.zip"
    _zip_folder(folder, target)
    with zipfile.ZipFile(target) as zf:
        assert zf.testzip() is None
        assert {n: zf.read(n) for n in zf.namelist()} == files
        kinds = {i.filename: i.compress_type for i in zf.infolist()}
    assert kinds == {
        "model.safetensors": zipfile.ZIP_STORED,
        "onnx/model.onnx": zipfile.ZIP_STORED,
        "tokenizer.json": zipfile.ZIP_DEFLATED,
    }
