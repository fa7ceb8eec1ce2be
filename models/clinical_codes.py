"""Clinical code systems, codes and units (LOINC, UCUM, SNOMED CT, IEEE 11073 MDC).

They sit at the bottom with the models, which read vitals by these codes
(:mod:`models.vitals_features`); the IoMT bridge writes its Observations with them.

Vital-sign codes and units follow the FHIR R4 vital-signs profile
(http://hl7.org/fhir/R4/observation-vitalsigns.html); device codes are IEEE 11073-10101
(MDC) nomenclature as sent by bedside monitors (IHE PCD-01); NEWS2 score codes are the
SNOMED CT UK-edition concepts used by NHS England and the HL7 UK Core
``UKCore-EarlyWarningTotalScores`` / ``UKCore-EarlyWarningSubScore`` value sets.

There is no LOINC code for the NEWS2 total score: UK Core states that the early warning total
score "does not have a LOINC magic code", so the SNOMED CT concept is used.
"""
from __future__ import annotations

from dataclasses import dataclass

# --- Code systems -------------------------------------------------------------------------------
LOINC_SYSTEM = "http://loinc.org"  # FHIR R4 terminologies-systems
SNOMED_SYSTEM = "http://snomed.info/sct"  # FHIR R4 terminologies-systems
UCUM_SYSTEM = "http://unitsofmeasure.org"  # FHIR R4 terminologies-systems
MDC_SYSTEM = "urn:iso:std:iso:11073:10101"  # FHIR R4 terminologies-systems (IEEE 11073-10101)
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/data-absent-reason"

# --- Observation categories ---------------------------------------------------------------------
VITAL_SIGNS_CATEGORY = "vital-signs"  # observation-category, required by the vital-signs profile
VITAL_SIGNS_CATEGORY_DISPLAY = "Vital Signs"
SURVEY_CATEGORY = "survey"  # observation-category, used by NHS England for NEWS2 scores
SURVEY_CATEGORY_DISPLAY = "Survey"

DATA_ABSENT_UNKNOWN = "unknown"  # data-absent-reason: value expected but not known

# --- FHIR R4 vital-signs profiles ---------------------------------------------------------------
VITAL_SIGNS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
HEART_RATE_PROFILE = "http://hl7.org/fhir/StructureDefinition/heartrate"
RESPIRATORY_RATE_PROFILE = "http://hl7.org/fhir/StructureDefinition/resprate"
OXYGEN_SATURATION_PROFILE = "http://hl7.org/fhir/StructureDefinition/oxygensat"
BLOOD_PRESSURE_PROFILE = "http://hl7.org/fhir/StructureDefinition/bp"
BODY_TEMPERATURE_PROFILE = "http://hl7.org/fhir/StructureDefinition/bodytemp"

# --- LOINC, FHIR R4 vital-signs profile ---------------------------------------------------------
HEART_RATE = "8867-4"  # LOINC, FHIR R4 vital-signs profile (heartrate)
RESPIRATORY_RATE = "9279-1"  # LOINC, FHIR R4 vital-signs profile (resprate)
OXYGEN_SATURATION = "2708-6"  # LOINC, FHIR R4 vital-signs profile (oxygensat, required code)
OXYGEN_SATURATION_PULSE_OXIMETRY = "59408-5"  # LOINC, FHIR R4 oxygensat (additional coding)
BLOOD_PRESSURE_PANEL = "85354-9"  # LOINC, FHIR R4 vital-signs profile (bp)
SYSTOLIC_BP = "8480-6"  # LOINC, FHIR R4 bp profile component
DIASTOLIC_BP = "8462-4"  # LOINC, FHIR R4 bp profile component
BODY_TEMPERATURE = "8310-5"  # LOINC, FHIR R4 vital-signs profile (bodytemp)

LOINC_DISPLAY: dict[str, str] = {
    HEART_RATE: "Heart rate",
    RESPIRATORY_RATE: "Respiratory rate",
    OXYGEN_SATURATION: "Oxygen saturation in Arterial blood",
    OXYGEN_SATURATION_PULSE_OXIMETRY: "Oxygen saturation in Arterial blood by Pulse oximetry",
    BLOOD_PRESSURE_PANEL: "Blood pressure panel with all children optional",
    SYSTOLIC_BP: "Systolic blood pressure",
    DIASTOLIC_BP: "Diastolic blood pressure",
    BODY_TEMPERATURE: "Body temperature",
}

# --- UCUM units (FHIR ValueSet ucum-vitals-common) ----------------------------------------------
PER_MINUTE = "/min"  # UCUM, ucum-vitals-common
PERCENT = "%"  # UCUM, ucum-vitals-common
MM_HG = "mm[Hg]"  # UCUM, ucum-vitals-common
CELSIUS = "Cel"  # UCUM, ucum-vitals-common
FAHRENHEIT = "[degF]"  # UCUM, ucum-vitals-common
KILOPASCAL = "kPa"  # UCUM
FRACTION = "1"  # UCUM unity, SpO2 sent as a fraction 0-1
SCORE = "{score}"  # UCUM annotation, NHS England NEWS2 sub-score guidance

MM_HG_PER_KPA = 7.50062  # 1 kPa = 7.50062 mm[Hg]


@dataclass(frozen=True)
class VitalSign:
    """One vital sign as the FHIR R4 vital-signs profile codes it.

    ``ucum`` is the canonical UCUM unit, ``unit_display`` the human-readable unit of the
    profile's examples, ``profile`` the specific profile URL.
    """

    loinc: str
    display: str
    ucum: str
    unit_display: str
    profile: str


VITAL_SIGNS: dict[str, VitalSign] = {
    HEART_RATE: VitalSign(HEART_RATE, "Heart rate", PER_MINUTE, "beats/minute", HEART_RATE_PROFILE),
    RESPIRATORY_RATE: VitalSign(
        RESPIRATORY_RATE, "Respiratory rate", PER_MINUTE, "breaths/minute", RESPIRATORY_RATE_PROFILE
    ),
    OXYGEN_SATURATION: VitalSign(
        OXYGEN_SATURATION, "Oxygen saturation", PERCENT, "%", OXYGEN_SATURATION_PROFILE
    ),
    SYSTOLIC_BP: VitalSign(
        SYSTOLIC_BP, "Systolic blood pressure", MM_HG, "mmHg", BLOOD_PRESSURE_PROFILE
    ),
    DIASTOLIC_BP: VitalSign(
        DIASTOLIC_BP, "Diastolic blood pressure", MM_HG, "mmHg", BLOOD_PRESSURE_PROFILE
    ),
    BODY_TEMPERATURE: VitalSign(
        BODY_TEMPERATURE, "Body temperature", CELSIUS, "°C", BODY_TEMPERATURE_PROFILE
    ),
}
"""Vital signs accepted from devices, keyed by canonical LOINC code."""

LOINC_ALIASES: dict[str, str] = {
    OXYGEN_SATURATION_PULSE_OXIMETRY: OXYGEN_SATURATION,  # both code SpO2 in the oxygensat profile
}
"""Other accepted LOINC codes and the canonical code they are stored under."""

# --- IEEE 11073-10101 (MDC) -> LOINC ------------------------------------------------------------
MDC_ECG_HEART_RATE = "147842"  # IEEE 11073-10101
MDC_RESP_RATE = "151562"  # IEEE 11073-10101
MDC_PULS_OXIM_SAT_O2 = "150456"  # IEEE 11073-10101
MDC_PRESS_BLD_NONINV_SYS = "150021"  # IEEE 11073-10101
MDC_PRESS_BLD_NONINV_DIA = "150022"  # IEEE 11073-10101
MDC_TEMP_BODY = "150364"  # IEEE 11073-10101

MDC_TO_LOINC: dict[str, str] = {
    MDC_ECG_HEART_RATE: HEART_RATE,
    MDC_RESP_RATE: RESPIRATORY_RATE,
    MDC_PULS_OXIM_SAT_O2: OXYGEN_SATURATION,
    MDC_PRESS_BLD_NONINV_SYS: SYSTOLIC_BP,
    MDC_PRESS_BLD_NONINV_DIA: DIASTOLIC_BP,
    MDC_TEMP_BODY: BODY_TEMPERATURE,
}

# --- NEWS2, SNOMED CT UK edition (UK Core early warning value sets) -----------------------------
NEWS2_TOTAL_SCORE = "1104051000000101"  # SNOMED CT, UKCore-EarlyWarningTotalScores
NEWS2_TOTAL_SCORE_DISPLAY = (
    "Royal College of Physicians NEWS2 (National Early Warning Score 2) total score"
)
NEWS2_RESPIRATION_RATE_SCORE = "1104301000000104"  # SNOMED CT, UKCore-EarlyWarningSubScore
NEWS2_SPO2_SCALE_1_SCORE = "1104311000000102"  # SNOMED CT, UKCore-EarlyWarningSubScore
NEWS2_SPO2_SCALE_2_SCORE = "1104321000000108"  # SNOMED CT, UKCore-EarlyWarningSubScore
NEWS2_AIR_OR_OXYGEN_SCORE = "1104331000000105"  # SNOMED CT, UKCore-EarlyWarningSubScore
NEWS2_SYSTOLIC_BP_SCORE = "1104341000000101"  # SNOMED CT, UKCore-EarlyWarningSubScore
NEWS2_PULSE_SCORE = "1104351000000103"  # SNOMED CT, UKCore-EarlyWarningSubScore
NEWS2_CONSCIOUSNESS_SCORE = "1104361000000100"  # SNOMED CT, UKCore-EarlyWarningSubScore
NEWS2_TEMPERATURE_SCORE = "1104371000000107"  # SNOMED CT, UKCore-EarlyWarningSubScore

_NEWS2_PREFIX = "Royal College of Physicians National Early Warning Score 2 - "
SNOMED_DISPLAY: dict[str, str] = {
    NEWS2_TOTAL_SCORE: NEWS2_TOTAL_SCORE_DISPLAY,
    NEWS2_RESPIRATION_RATE_SCORE: _NEWS2_PREFIX + "respiration rate score",
    NEWS2_SPO2_SCALE_1_SCORE: _NEWS2_PREFIX + "oxygen saturation scale 1 score",
    NEWS2_SPO2_SCALE_2_SCORE: _NEWS2_PREFIX + "oxygen saturation scale 2 score",
    NEWS2_AIR_OR_OXYGEN_SCORE: _NEWS2_PREFIX + "air or oxygen score",
    NEWS2_SYSTOLIC_BP_SCORE: _NEWS2_PREFIX + "systolic blood pressure score",
    NEWS2_PULSE_SCORE: _NEWS2_PREFIX + "pulse score",
    NEWS2_CONSCIOUSNESS_SCORE: _NEWS2_PREFIX + "consciousness score",
    NEWS2_TEMPERATURE_SCORE: _NEWS2_PREFIX + "temperature score",
}

# --- ECG waveforms, IEEE 11073-10101 MDC_ECG_ELEC_POTL_* ----------------------------------------
# Codes as in the FHIR R4 example Observation/ekg (observation-example-sample-data), which codes
# the ECG as 131328 MDC_ECG_ELEC_POTL with one SampledData component per lead.
MDC_ECG_ELEC_POTL = "131328"  # IEEE 11073-10101, FHIR R4 Observation/ekg
PROCEDURE_CATEGORY = "procedure"  # observation-category, FHIR R4 Observation/ekg
PROCEDURE_CATEGORY_DISPLAY = "Procedure"
MILLIVOLT = "mV"  # UCUM
MILLISECOND = "ms"  # UCUM

ECG_LEADS: dict[str, str] = {
    "131329": "MDC_ECG_ELEC_POTL_I",  # FHIR R4 Observation/ekg
    "131330": "MDC_ECG_ELEC_POTL_II",  # FHIR R4 Observation/ekg
    "131389": "MDC_ECG_ELEC_POTL_III",  # FHIR R4 Observation/ekg
    "131390": "MDC_ECG_ELEC_POTL_AVR",  # IEEE 11073-10101
    "131391": "MDC_ECG_ELEC_POTL_AVL",  # IEEE 11073-10101
    "131392": "MDC_ECG_ELEC_POTL_AVF",  # IEEE 11073-10101
    "131331": "MDC_ECG_ELEC_POTL_V1",  # IEEE 11073-10101
    "131332": "MDC_ECG_ELEC_POTL_V2",  # IEEE 11073-10101
    "131333": "MDC_ECG_ELEC_POTL_V3",  # IEEE 11073-10101
    "131334": "MDC_ECG_ELEC_POTL_V4",  # IEEE 11073-10101
    "131335": "MDC_ECG_ELEC_POTL_V5",  # IEEE 11073-10101
    "131336": "MDC_ECG_ELEC_POTL_V6",  # IEEE 11073-10101
}
"""ECG leads accepted in waveform chunks: MDC code -> reference id."""
