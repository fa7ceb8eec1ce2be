// Load TID 1500 Measurement Reports the way the OHIF Viewer does: dcmjs parses the files and
// @cornerstonejs/adapters' MeasurementReport.generateToolState turns the measurement groups into
// Cornerstone3D annotations on the source images.
//
//   node read_measurements.mjs FILE.dcm...
//
// Files whose Modality is SR are the reports; every other file is a source image, registered as
// image id "medgate:<SOP Instance UID>" with its image plane (PS3.3 C.7.6.2; projection images
// without one get the identity plane, as a viewer shows them in pixel units).  Prints one JSON
// object on stdout: per report, its number of measurement groups and the annotations loaded, each
// with tool type, referenced SOP instance, world coordinates and (on an image) image coordinates
// (column, row) in DICOM SCOORD convention.  The adapters' logging goes to stderr.
import { readFileSync } from "node:fs";

for (const method of ["log", "info", "debug", "warn"]) {
  console[method] = (...args) => console.error(...args);
}
const core = await import("@cornerstonejs/core");
const { adaptersSR } = await import("@cornerstonejs/adapters");
const dcmjs = (await import("dcmjs")).default;

const { MeasurementReport } = adaptersSR.Cornerstone3D;
const { DicomMessage, DicomMetaDictionary } = dcmjs.data;
const IMAGE_ID_PREFIX = "medgate:";

function read(path) {
  const bytes = readFileSync(path);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  return DicomMetaDictionary.naturalizeDataset(DicomMessage.readFile(buffer).dict);
}

function numbers(value, fallback) {
  return value === undefined || value === null || value === "" ? fallback : Array.from(value, Number);
}

function imagePlane(ds) {
  const orientation = numbers(ds.ImageOrientationPatient, [1, 0, 0, 0, 1, 0]);
  const spacing = numbers(ds.PixelSpacing ?? ds.ImagerPixelSpacing, [1, 1]);
  return {
    frameOfReferenceUID: ds.FrameOfReferenceUID,
    rows: ds.Rows,
    columns: ds.Columns,
    imageOrientationPatient: orientation,
    rowCosines: orientation.slice(0, 3),
    columnCosines: orientation.slice(3, 6),
    imagePositionPatient: numbers(ds.ImagePositionPatient, [0, 0, 0]),
    pixelSpacing: spacing,
    rowPixelSpacing: spacing[0],
    columnPixelSpacing: spacing[1],
  };
}

const planes = {};
const imageIdsBySopInstance = {};
const reports = [];
for (const path of process.argv.slice(2)) {
  const ds = read(path);
  if (ds.Modality === "SR") {
    reports.push({ path, ds });
  } else {
    const imageId = IMAGE_ID_PREFIX + ds.SOPInstanceUID;
    planes[imageId] = imagePlane(ds);
    imageIdsBySopInstance[`${ds.SOPInstanceUID}:1`] = imageId;
  }
}
core.metaData.addProvider((type, imageId) => (type === "imagePlaneModule" ? planes[imageId] : undefined), 10000);

function groupCount(ds) {
  const content = [].concat(ds.ContentSequence ?? []);
  const measurements = content.find((item) => [].concat(item.ConceptNameCodeSequence)[0]?.CodeValue === "126010");
  return [].concat(measurements?.ContentSequence ?? []).length;
}

function annotationOf(toolType, state) {
  const { annotation } = state;
  const imageId = annotation.metadata.referencedImageId;
  const world = annotation.data.contour?.polyline ?? annotation.data.handles?.points ?? [];
  return {
    toolType,
    description: state.description ?? null,
    trackingUniqueIdentifier: state.TrackingUniqueIdentifier ?? null,
    referencedSOPInstanceUID: imageId ? imageId.slice(IMAGE_ID_PREFIX.length) : null,
    frameOfReferenceUID: annotation.metadata.FrameOfReferenceUID ?? null,
    world: world.map((point) => Array.from(point, Number)),
    image: imageId ? world.map((point) => core.utilities.worldToImageCoords(imageId, point)) : null,
  };
}

const out = [];
for (const { path, ds } of reports) {
  const state = MeasurementReport.generateToolState(ds, imageIdsBySopInstance, core.metaData);
  out.push({
    path,
    sopInstanceUID: ds.SOPInstanceUID,
    groups: groupCount(ds),
    annotations: Object.entries(state).flatMap(([toolType, states]) => states.map((s) => annotationOf(toolType, s))),
  });
}
process.stdout.write(JSON.stringify({ reports: out }) + "\n");
