"""docs/gsps-example.png: a generated chest X-ray with medgate's GSPS applied by DCMTK ``dcmp2pgm``
(its activated overlay plane in yellow) and the GSPS caption drawn over it as a viewer shows it.

    .venv/bin/python docs/gsps_example.py
"""
import subprocess
import sys
import tempfile

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
OUT = ROOT / "docs" / "gsps-example.png"
from pathlib import Path
import numpy as np
from PIL import Image, ImageDraw
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset
from models.finding import Finding, Concept, SourceImage
from dicom_gateway.gsps import build_presentation_state, caption
sample = generate_cxr(np.random.default_rng(11), tb=True)
ds = make_dx_dataset(sample.pixels)
src = SourceImage(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID, sop_instance_uid=ds.SOPInstanceUID,
                  sop_class_uid=ds.SOPClassUID, rows=int(ds.Rows), columns=int(ds.Columns))
point = (ds.Columns * 0.62, ds.Rows * 0.35)
f = Finding(model="tb", model_version="1.1.0", code=Concept("56717001", "SCT", "Tuberculosis"), probability=0.91,
            threshold=0.5, source=src, point=point)
g = build_presentation_state([f], ds, series_instance_uid="1.2.826.0.1.3680043.8.498.11", sop_instance_uid="1.2.826.0.1.3680043.8.498.12")
d = Path(tempfile.mkdtemp()); ds.save_as(d/"s.dcm", enforce_file_format=True); g.save_as(d/"p.dcm", enforce_file_format=True)
subprocess.run(["dcmp2pgm", "-v", "-p", "p.dcm", "s.dcm", "out.pgm"], cwd=d, check=True, capture_output=True)
img = Image.open(d / "out.pgm").convert("RGB")  # the source as dcmp2pgm presents it under the GSPS
ovl = np.asarray(Image.open(sorted(d.glob("ovl_*.pgm"))[0])) > 0  # the overlay plane it activates
a = np.asarray(img).copy()
a[ovl] = (255, 215, 0)
img = Image.fromarray(a).resize((2 * img.width, 2 * img.height), Image.Resampling.BICUBIC)
draw = ImageDraw.Draw(img)
text = caption([f])
for i, line in enumerate((text[:len(text) // 2].rsplit(" ", 1)[0], text[len(text[:len(text) // 2].rsplit(" ", 1)[0]) + 1:])):
    draw.text((6, 6 + 14 * i), line, fill=(255, 215, 0))  # the GSPS text object, drawn as a viewer would
img.save(OUT)
print(OUT, img.size)
