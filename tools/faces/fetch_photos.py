"""Extract the public test photos from PyPI packages into fixtures/faces/photos/.

Run once (results are committed):  /work/refvenv/bin/python tools/faces/fetch_photos.py

Sources (downloaded with `pip download --no-deps`, nothing installed):
  insightface==0.7.3 (sdist)   insightface/data/images/t1.jpg (6 people), Tom_Hanks_54745.png (112² aligned)
  matplotlib (wheel)           mpl-data/sample_data/grace_hopper.jpg (public domain)
  scikit-image (wheel)         skimage/data/astronaut.png (public domain, re-encoded as JPEG q=90),
                               skimage/data/coffee.png (no face; re-encoded as JPEG q=85)
Derived:
  exif_rotated.jpg  grace_hopper at 256 px wide, pixels stored rotated 90° counter-clockwise with
                    EXIF Orientation=6 ("rotate 90° clockwise to display"), so only a loader that
                    honours EXIF sees an upright face.
"""
import io
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "faces" / "photos"


def pip_download(spec, dest, binary):
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), spec]
    if binary:
        args.insert(4, "--only-binary=:all:")
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return sorted(dest.iterdir())[-1]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for sub in ("if", "mpl", "ski"):
            (tmp / sub).mkdir()
        sdist = pip_download("insightface==0.7.3", tmp / "if", binary=False)
        with tarfile.open(sdist) as tf:
            for name in ("t1.jpg", "Tom_Hanks_54745.png"):
                member = f"insightface-0.7.3/insightface/data/images/{name}"
                (OUT / name).write_bytes(tf.extractfile(member).read())
        whl = pip_download("matplotlib==3.11.2", tmp / "mpl", binary=True)
        with zipfile.ZipFile(whl) as zf:
            (OUT / "grace_hopper.jpg").write_bytes(zf.read("matplotlib/mpl-data/sample_data/grace_hopper.jpg"))
        whl = pip_download("scikit-image==0.26.0", tmp / "ski", binary=True)
        with zipfile.ZipFile(whl) as zf:
            astro = Image.open(io.BytesIO(zf.read("skimage/data/astronaut.png"))).convert("RGB")
            astro.save(OUT / "astronaut.jpg", quality=90)
            coffee = Image.open(io.BytesIO(zf.read("skimage/data/coffee.png"))).convert("RGB")
            coffee.save(OUT / "coffee.jpg", quality=85)

    hopper = Image.open(OUT / "grace_hopper.jpg").convert("RGB")
    hopper = hopper.resize((256, round(256 * hopper.height / hopper.width)), Image.LANCZOS)
    stored = hopper.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(OUT.parent / "exif_rotated.jpg", quality=90, exif=exif.tobytes())
    for p in sorted(OUT.parent.rglob("*.*")):
        print(p.relative_to(ROOT), p.stat().st_size)


if __name__ == "__main__":
    main()
