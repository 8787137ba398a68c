"""Who is scanned where: the sites' true parameters and the subjects' random traits, each
drawn from its own random stream keyed by the seed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

AGE_RANGE = (45.0, 90.0)
AD_FRACTION = 0.25
#: Stored orientation and voxel-size factor per site index (cycled); site 0 and 1 share a grid.
GEOMETRIES = (("RAS", 1.0), ("LPS", 1.0), ("RAS", 1.25), ("LAS", 1.0))
_SCANNERS = (
    {"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma_fit", "MagneticFieldStrength": 3,
     "SoftwareVersions": "syngo MR XA30", "PulseSequenceType": "MPRAGE", "RepetitionTime": 2.3,
     "EchoTime": 0.00229, "InversionTime": 0.9, "FlipAngle": 8},
    {"Manufacturer": "GE", "ManufacturersModelName": "DISCOVERY MR750", "MagneticFieldStrength": 3,
     "SoftwareVersions": "DV26.0_R03", "PulseSequenceType": "IR-FSPGR", "RepetitionTime": 0.0082,
     "EchoTime": 0.0032, "InversionTime": 0.45, "FlipAngle": 12},
    {"Manufacturer": "Philips", "ManufacturersModelName": "Achieva", "MagneticFieldStrength": 1.5,
     "SoftwareVersions": "5.3.1", "PulseSequenceType": "T1-TFE", "RepetitionTime": 0.0081,
     "EchoTime": 0.0037, "InversionTime": 1.0, "FlipAngle": 8},
    {"Manufacturer": "Siemens", "ManufacturersModelName": "Skyra", "MagneticFieldStrength": 3,
     "SoftwareVersions": "syngo MR E11", "PulseSequenceType": "MPRAGE", "RepetitionTime": 2.4,
     "EchoTime": 0.00216, "InversionTime": 1.0, "FlipAngle": 8},
)
_INTENSITY_FAMILIES = ("gamma", "exp", "log")
_TEMPORAL = ("ITG_inferior_temporal_gyrus", "MTG_middle_temporal_gyrus",
             "STG_superior_temporal_gyrus", "TMP_temporal_pole", "Ent_entorhinal_area",
             "PHG_parahippocampal_gyrus", "FuG_fusiform_gyrus")
# RNG streams (the first words of every SeedSequence after the seed).
_STREAM_DESIGN, _STREAM_SITE, _STREAM_SUBJECT, _STREAM_NOISE = 1, 2, 3, 4


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator per (seed, stream, index...): order-free determinism."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def _smooth_coefs(rng: np.random.Generator, n: int, amplitude: float, components: int = 1) -> np.ndarray:
    """Random cosine coefficients whose power falls with frequency (no constant term)."""
    freq = np.add.outer(np.add.outer(np.arange(n), np.arange(n)), np.arange(n)).astype(float)
    scale = amplitude / (1.0 + freq) ** 1.5
    scale[0, 0, 0] = 0.0
    return rng.normal(size=(components, n, n, n)) * scale


@dataclass(frozen=True)
class _Region:
    """A region that changes with age and diagnosis (fractional volume change)."""

    key: str
    labels: tuple[str, ...]
    age_rate: float  # per year after AGE_RANGE[0]
    ad_effect: float
    expand: bool = False


def _regions() -> tuple[_Region, ...]:
    out = []
    for side, s in (("Left", "L"), ("Right", "R")):
        out += [
            _Region(f"hippocampus_{s}", (f"{side}_Hippocampus",), 0.0045, 0.18),
            _Region(f"amygdala_{s}", (f"{side}_Amygdala",), 0.0035, 0.14),
            _Region(f"temporal_{s}", tuple(f"{side}_{t}" for t in _TEMPORAL), 0.0015, 0.05),
            _Region(f"ventricle_{s}", (f"{side}_Lateral_Ventricle", f"{side}_Inf_Lat_Vent"),
                    0.015, 0.30, expand=True),
        ]
    return tuple(out)


REGIONS = _regions()


def _site_name(index: int) -> str:
    return f"site{chr(ord('A') + index)}" if index < 26 else f"site{index + 1}"


def _age_ranges(n_sites: int) -> list[tuple[float, float]]:
    """Partially overlapping age ranges, older at later sites (site confounds age)."""
    low, high = AGE_RANGE
    if n_sites == 1:
        return [(low, high)]
    width = 0.55 * (high - low)
    step = (high - low - width) / (n_sites - 1)
    return [(low + k * step, low + k * step + width) for k in range(n_sites)]


def make_sites(n_sites: int, resolution: float, seed: int, vary_geometry: bool = True) -> list[dict]:
    """The true parameters of every site (written to ``ground_truth/sites.json``)."""
    sites = []
    for k, ages in enumerate(_age_ranges(n_sites)):
        rng = _rng(seed, _STREAM_SITE, k)
        family = _INTENSITY_FAMILIES[k % len(_INTENSITY_FAMILIES)]
        parameter = {"gamma": rng.uniform(0.6, 1.4), "exp": rng.uniform(0.8, 2.0),
                     "log": rng.uniform(2.0, 8.0)}[family]
        orientation, factor = GEOMETRIES[k % len(GEOMETRIES)] if vary_geometry else ("RAS", 1.0)
        noise_kind = "gaussian" if k % 3 == 2 else "rician"
        scanner = dict(_SCANNERS[k % len(_SCANNERS)])
        name = _site_name(k)
        scanner.update({
            "InstitutionName": f"Synthetic {name} Imaging Centre",
            "DeviceSerialNumber": f"{10000 + 137 * k}",
            "MRAcquisitionType": "3D",
        })
        sites.append({
            "name": name,
            "index": k,
            "age_range": [round(a, 2) for a in ages],
            "intensity": {"family": family, "parameter": round(float(parameter), 4),
                          "gain": round(float(rng.uniform(700, 1600)), 2),
                          "offset": round(float(rng.uniform(0, 40)), 2)},
            "bias": {"coefficients": [round(float(c), 4) for c in rng.normal(0, 0.07, 9)],
                     "model": "exp(c . [x, y, z, x2, y2, z2, xy, xz, yz]), world mm / 100"},
            "noise": {"kind": noise_kind,
                      "sigma_fraction_of_wm": round(float(rng.uniform(0.015, 0.045)), 4)},
            "voxel_size_mm": round(float(resolution) * factor, 4),
            "orientation": orientation,
            "scanner": scanner,
        })
    return sites


@dataclass
class Subject:
    """One synthetic participant (all hidden truth)."""

    participant_id: str
    index: int
    sex: str
    age: float
    diagnosis: str
    sites: list[str]  # one site, or every site for a traveling subject
    brain_scale: float
    head_scale: float
    pose_angles: np.ndarray
    pose_shift: np.ndarray
    warp_coefs: np.ndarray
    thickness_coefs: np.ndarray
    region_change: dict[str, float]
    gm_thinning: float
    mtl_thinning: float
    layers_mm: dict[str, float] = field(default_factory=dict)

    @property
    def traveling(self) -> bool:
        return len(self.sites) > 1

    def truth_row(self) -> dict:
        row = {"participant_id": f"sub-{self.participant_id}", "age": self.age, "sex": self.sex,
               "site": self.sites[0], "diagnosis": self.diagnosis, "traveling": self.traveling,
               "sessions": ",".join(self.sites) if self.traveling else "n/a",
               "brain_scale": round(self.brain_scale, 4), "head_scale": round(self.head_scale, 4),
               "gm_thinning": round(self.gm_thinning, 4), "mtl_thinning": round(self.mtl_thinning, 4)}
        row.update({f"change_{k}": round(v, 4) for k, v in self.region_change.items()})
        row.update({f"layer_{k}_mm": round(v, 3) for k, v in self.layers_mm.items()})
        return row


def _draw_subject(seed: int, index: int, pid: str, sites: list[str], age_range, diagnosis: str) -> Subject:
    """All random traits of one subject from its own stream."""
    rng = _rng(seed, _STREAM_SUBJECT, index)
    sex = "M" if rng.random() < 0.5 else "F"
    age = round(float(rng.uniform(*age_range)), 1)
    ad = diagnosis == "AD"
    years = max(age - AGE_RANGE[0], 0.0)
    changes = {}
    for region in REGIONS:
        change = region.age_rate * years + region.ad_effect * ad + rng.normal(0, 0.015)
        changes[region.key] = float(np.clip(change, 0.0, 1.5 if region.expand else 0.45))
    brain_scale = (1.03 if sex == "M" else 0.97) * float(np.exp(rng.normal(0, 0.03)))
    return Subject(
        participant_id=pid, index=index, sex=sex, age=age, diagnosis=diagnosis, sites=sites,
        brain_scale=brain_scale,
        head_scale=brain_scale * float(rng.uniform(0.95, 1.08)),
        pose_angles=rng.normal(0, [5.0, 3.0, 3.0]),
        pose_shift=rng.normal(0, 3.0, 3),
        warp_coefs=_smooth_coefs(rng, 7, 2.0, components=3),
        thickness_coefs=_smooth_coefs(rng, 4, 0.25)[0],
        region_change=changes,
        gm_thinning=float(np.clip(0.003 * max(age - 30, 0) + 0.04 * ad + rng.normal(0, 0.01), 0, 0.4)),
        mtl_thinning=float(np.clip(0.004 * years + 0.15 * ad + rng.normal(0, 0.01), 0, 0.5)),
        layers_mm={
            "csf_rim": float(np.clip(1.5 + 0.04 * years + rng.normal(0, 0.3), 1.0, 4.0)),
            "inner_table": float(rng.uniform(1.5, 2.5)),
            "marrow": float(rng.uniform(2.0, 4.0)),
            "outer_table": float(rng.uniform(1.5, 2.5)),
            "fat": float(rng.uniform(2.5, 5.5)),
            "skin": float(rng.uniform(1.5, 2.5)),
        },
    )


def make_subjects(n_subjects: int, sites: list[dict], seed: int, n_traveling: int) -> list[Subject]:
    """Single-site subjects spread over the sites, then the traveling subjects."""
    rng = _rng(seed, _STREAM_DESIGN)
    names = [s["name"] for s in sites]
    total = n_subjects + n_traveling
    n_ad = int(round(AD_FRACTION * total))
    diagnoses = np.array(["AD"] * n_ad + ["CN"] * (total - n_ad))[rng.permutation(total)]
    assigned = [names[i % len(names)] for i in rng.permutation(n_subjects)] if n_subjects else []
    by_name = {s["name"]: s for s in sites}
    subjects = [
        _draw_subject(seed, i, f"{i + 1:03d}", [site], by_name[site]["age_range"], str(diagnoses[i]))
        for i, site in enumerate(assigned)
    ]
    # Travellers: ages where the sites overlap most, so every site could have scanned them.
    lows, highs = zip(*(s["age_range"] for s in sites))
    low, high = max(lows), min(highs)
    travel_range = (low, high) if low < high else ((low + high) / 2,) * 2
    for t in range(n_traveling):
        i = n_subjects + t
        subjects.append(_draw_subject(seed, i, f"T{t + 1:02d}", list(names), travel_range, str(diagnoses[i])))
    return subjects
