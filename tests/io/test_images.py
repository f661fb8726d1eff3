"""Radiograph files: every format of CONTRACT section 4 round-trips; bad files give InputError."""

import numpy as np
import pytest
from PIL import Image

from biplanar.errors import InputError
from biplanar.io.images import read_image, write_image

IMAGE = np.linspace(0.0, 3.5, 224 * 160, dtype=np.float32).reshape(224, 160)


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".tiff"])
def test_float_formats_round_trip(tmp_path, suffix):
    write_image(tmp_path / f"x{suffix}", IMAGE)
    read = read_image(tmp_path / f"x{suffix}")
    assert read.dtype == np.float32 and read.shape == (224, 160)
    np.testing.assert_array_equal(read, IMAGE)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_8_and_16_bit(tmp_path, dtype):
    pixels = (np.arange(224 * 160) * 37 % np.iinfo(dtype).max).astype(dtype).reshape(224, 160)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), pixels.astype(np.float32))


def test_dicom(tmp_path):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = (np.arange(32 * 24) * 7 % 4096).astype(np.uint16).reshape(32, 24)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # computed radiography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.SamplesPerPixel, dataset.PixelRepresentation = 1, 0
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_image(tmp_path / "x.dcm"), pixels.astype(np.float32))


def test_bad_images(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "missing.npy")
    with pytest.raises(InputError, match="unsupported image format '.jpg'"):
        read_image(tmp_path / "x.jpg")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match="cube.npy: expected a 2D image"):
        read_image(tmp_path / "cube.npy")
    np.save(tmp_path / "nan.npy", np.full((3, 3), np.nan))
    with pytest.raises(InputError, match="nan.npy: contains NaN"):
        read_image(tmp_path / "nan.npy")
    (tmp_path / "junk.tif").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.tif: unreadable image"):
        read_image(tmp_path / "junk.tif")


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.npy", np.zeros((2, 2, 2)))
    assert list(tmp_path.iterdir()) == []
