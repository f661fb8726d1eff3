// The 3D panel of report.html (biplanar.io.report_html): the registered mesh and its landmarks,
// drawn with three.js. The library is inlined in the page as text (#three-module) and imported from
// a Blob URL: the page needs no network and no other file.
//
// Frame: world RAS+ mm (+x the patient's right, +y anterior, +z superior). The camera starts in
// front of the patient (an AP view: the patient's right on the viewer's left), +z up, and orbits
// the mesh's bounding-sphere centre: drag rotates, the wheel zooms.
// Once the first frame is drawn, #viewer gets data-state="drawn" and data-rect="left,top,width,height"
// (CSS px of the page): the region a test checks for the mesh.

const viewer = document.getElementById("viewer");
const data = JSON.parse(document.getElementById("mesh-data").textContent);
const source = document.getElementById("three-module").textContent;
const moduleUrl = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
const THREE = await import(moduleUrl);
URL.revokeObjectURL(moduleUrl);

const FIELD_OF_VIEW_DEG = 30;
const ROTATE_RAD_PER_PX = 0.01;
const ZOOM_PER_WHEEL_UNIT = 0.001; // distance *= exp(deltaY * this)
const MAX_ELEVATION_RAD = 1.55; // just under 90 deg: the camera never looks straight along +z
const MARKER_RADIUS_FRACTION = 0.025; // landmark spheres, as a fraction of the mesh's bounding radius
const MARKER_COLOURS = [0xd62728, 0x1f77b4, 0x2ca02c, 0x9467bd, 0xff7f0e, 0x17becf];
const LABEL_GAP_PX = 8; // between a marker and its label
const LABEL_SPACING_PX = 20; // labels on one side are pushed down to at least this far apart

// little-endian bytes (base64) -> a typed array: float32 vertex coordinates, uint16/uint32 indices.
function decode(base64, Type) {
  const bytes = Uint8Array.from(atob(base64), (character) => character.charCodeAt(0));
  return new Type(bytes.buffer);
}

const geometry = new THREE.BufferGeometry();
geometry.setAttribute("position", new THREE.BufferAttribute(decode(data.positions, Float32Array), 3)); // (V * 3) mm
const IndexType = data.index_bytes === 2 ? Uint16Array : Uint32Array;
geometry.setIndex(new THREE.BufferAttribute(decode(data.indices, IndexType), 1)); // (F * 3)
geometry.computeVertexNormals();
geometry.computeBoundingSphere();
const centre = geometry.boundingSphere.center;
const radius = geometry.boundingSphere.radius;

const renderer = new THREE.WebGLRenderer({ antialias: true });
renderer.setPixelRatio(window.devicePixelRatio);
viewer.appendChild(renderer.domElement);
const scene = new THREE.Scene();
scene.background = new THREE.Color(data.background);
const camera = new THREE.PerspectiveCamera(FIELD_OF_VIEW_DEG, 1, radius / 100, radius * 100);
camera.up.set(0, 0, 1);
camera.add(new THREE.PointLight(0xffffff, 2.2, 0, 0)); // a head light, no fall-off with distance
scene.add(camera, new THREE.AmbientLight(0xffffff, 0.6));
const material = new THREE.MeshStandardMaterial({ color: 0xe3d6b8, roughness: 0.75, metalness: 0 });
scene.add(new THREE.Mesh(geometry, material));

// Landmarks: spheres drawn over the mesh (some, like the head centre, lie inside it), with labels.
const markerGeometry = new THREE.SphereGeometry(radius * MARKER_RADIUS_FRACTION, 16, 12);
const labels = data.landmarks.map((landmark, index) => {
  const colour = MARKER_COLOURS[index % MARKER_COLOURS.length];
  const marker = new THREE.Mesh(
    markerGeometry,
    new THREE.MeshBasicMaterial({ color: colour, depthTest: false, transparent: true }),
  );
  marker.position.fromArray(landmark.position_mm);
  marker.renderOrder = 1;
  scene.add(marker);
  const label = document.createElement("span");
  label.className = "landmark-label";
  label.textContent = landmark.name;
  label.style.borderColor = `#${colour.toString(16).padStart(6, "0")}`;
  viewer.appendChild(label);
  return { label, position: marker.position };
});

let azimuth = 0; // rad about +z, 0: the camera anterior (+y) of the centre
let elevation = 0; // rad above the axial plane
let distance = (1.15 * radius) / Math.sin(THREE.MathUtils.degToRad(FIELD_OF_VIEW_DEG / 2));

function draw() {
  const width = viewer.clientWidth;
  const height = viewer.clientHeight;
  renderer.setSize(width, height);
  camera.aspect = width / height;
  camera.updateProjectionMatrix();
  const horizontal = distance * Math.cos(elevation);
  camera.position.set(
    centre.x + horizontal * Math.sin(azimuth),
    centre.y + horizontal * Math.cos(azimuth),
    centre.z + distance * Math.sin(elevation),
  );
  camera.lookAt(centre);
  camera.updateMatrixWorld();
  renderer.render(scene, camera);
  placeLabels(width, height);
}

// Each label beside its marker, on the side away from the mesh's centre on screen; labels on one
// side keep LABEL_SPACING_PX apart vertically, so that close landmarks stay readable.
function placeLabels(width, height) {
  const centreX = ((centre.clone().project(camera).x + 1) / 2) * width;
  const placed = labels.map(({ label, position }) => {
    const ndc = position.clone().project(camera); // normalised device coordinates, y up
    return { label, x: ((ndc.x + 1) / 2) * width, y: ((1 - ndc.y) / 2) * height };
  });
  for (const left of [true, false]) {
    let lowest = -Infinity;
    const side = placed.filter((item) => (item.x < centreX) === left).sort((a, b) => a.y - b.y);
    for (const { label, x, y } of side) {
      lowest = Math.max(y, lowest + LABEL_SPACING_PX);
      label.style.left = `${x}px`;
      label.style.top = `${lowest}px`;
      label.style.transform = left
        ? `translate(calc(-100% - ${LABEL_GAP_PX}px), -50%)`
        : `translate(${LABEL_GAP_PX}px, -50%)`;
    }
  }
}

let dragFrom = null;
renderer.domElement.addEventListener("pointerdown", (event) => {
  dragFrom = [event.clientX, event.clientY];
  renderer.domElement.setPointerCapture(event.pointerId);
});
renderer.domElement.addEventListener("pointermove", (event) => {
  if (dragFrom === null) return;
  azimuth -= (event.clientX - dragFrom[0]) * ROTATE_RAD_PER_PX;
  elevation += (event.clientY - dragFrom[1]) * ROTATE_RAD_PER_PX;
  elevation = Math.max(-MAX_ELEVATION_RAD, Math.min(MAX_ELEVATION_RAD, elevation));
  dragFrom = [event.clientX, event.clientY];
  draw();
});
renderer.domElement.addEventListener("pointerup", () => {
  dragFrom = null;
});
renderer.domElement.addEventListener(
  "wheel",
  (event) => {
    event.preventDefault();
    distance *= Math.exp(event.deltaY * ZOOM_PER_WHEEL_UNIT);
    draw();
  },
  { passive: false },
);
window.addEventListener("resize", draw);

draw();
const box = renderer.domElement.getBoundingClientRect();
viewer.dataset.rect = [box.left + window.scrollX, box.top + window.scrollY, box.width, box.height]
  .map(Math.round)
  .join(",");
viewer.dataset.state = "drawn";
