"""The Basic Application Level Confidentiality Profile attribute table.

Source: DICOM PS3.15 "Security and System Management Profiles", Annex E "Attribute Confidentiality
Profiles", Table E.1-1 "Application Level Confidentiality Profile Attributes", column "Basic Prof."
(edition 2024b).  pydicom ships no copy of this table, so it is kept here, one row per attribute:
``(group, element) -> (keyword, action)``.  Action codes (PS3.15 E.3.1):

* ``D`` replace with a non-zero length dummy value consistent with the VR;
* ``Z`` replace with a zero length value, or a dummy value consistent with the VR;
* ``X`` remove;
* ``K`` keep;
* ``C`` clean (replace identifying information in the value);
* ``U`` replace with a non-zero length UID, consistent within the set of instances;
* ``Z/D``, ``X/Z``, ``X/D``, ``X/Z/D``, ``X/Z/U*``: the first applicable per the IOD's type of
  the attribute (X for type 3, Z for type 2, D/U for type 1); ``U*`` applies to the UIDs inside
  the sequence.

Also removed by the profile (rows of the table that name groups, not single tags): private
attributes (``gggg,eeee`` with odd ``gggg``), curve data ``(50xx,xxxx)``, overlay data and comments
``(60xx,3000)``, ``(60xx,4000)``.

DICOM is a registered trademark of NEMA.  The attribute names and codes are reproduced as the
standard's data, to be checked against the edition cited.
"""
from __future__ import annotations

#: Basic Application Level Confidentiality Profile Option codes (PS3.16 CID 7050).
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
RETAIN_LONGITUDINAL_MODIFIED_DATES_CODE = ("113107", "DCM",
                                           "Retain Longitudinal Temporal Information Modified Dates Option")

_ROWS = """
00080050 AccessionNumber Z
FFFCFFFC DataSetTrailingPadding X
FFFAFFFA DigitalSignaturesSequence X
00184000 AcquisitionComments X
00400555 AcquisitionContextSequence X
00080022 AcquisitionDate X/D
0008002A AcquisitionDateTime X/D
00181400 AcquisitionDeviceProcessingDescription X/D
00189424 AcquisitionProtocolDescription X
00080032 AcquisitionTime X/D
00080017 AcquisitionUID U
00404035 ActualHumanPerformersSequence X
001021B0 AdditionalPatientHistory X
0040A353 AddressTrial X
00380010 AdmissionID X
00380020 AdmittingDate X
00081084 AdmittingDiagnosesCodeSequence X
00081080 AdmittingDiagnosesDescription X
00380021 AdmittingTime X
00102110 Allergies X
40000010 Arbitrary X
0040A078 AuthorObserverSequence X
00101081 BranchOfService X
00181007 CassetteID X
00400280 CommentsOnThePerformedProcedureStep X
00209161 ConcatenationUID U
00403001 ConfidentialityConstraintOnPatientDataDescription X
0008009C ConsultingPhysicianName Z
0008009D ConsultingPhysicianIdentificationSequence X
00700086 ContentCreatorIdentificationCodeSequence X
00700084 ContentCreatorName Z
00080023 ContentDate Z/D
0040A730 ContentSequence X
00080033 ContentTime Z/D
0008010D ContextGroupExtensionCreatorUID U
00180010 ContrastBolusAgent Z/D
0018A003 ContributionDescription X
00102150 CountryOfResidence X
00089123 CreatorVersionUID U
00380300 CurrentPatientLocation X
00080025 CurveDate X
00080035 CurveTime X
0040A07C CustodialOrganizationSequence X
00181200 DateOfLastCalibration X
00181012 DateOfSecondaryCapture X
0040A121 Date D
0040A120 DateTime D
00189701 DecayCorrectionDateTime X/D
00082111 DerivationDescription X
0018700A DetectorID X
00181000 DeviceSerialNumber X/Z/D
00181002 DeviceUID U
04000100 DigitalSignatureUID X
00209164 DimensionOrganizationUID U
00380040 DischargeDiagnosisDescription X
00380030 DischargeDate X
00380032 DischargeTime X
4008011A DistributionAddress X
40080119 DistributionName X
300A0013 DoseReferenceUID U
00189517 EndAcquisitionDateTime X/D
00102160 EthnicGroup X
00189804 ExclusionStartDateTime X
00080058 FailedSOPInstanceUIDList U
0070031A FiducialUID U
00402017 FillerOrderNumberImagingServiceRequest Z
00189074 FrameAcquisitionDateTime X/D
00209158 FrameComments X
00200052 FrameOfReferenceUID U
00189151 FrameReferenceDateTime X/D
00189623 FunctionalSyncPulse X/D
00181008 GantryID X
00181005 GeneratorID X
00700001 GraphicAnnotationSequence D
00404037 HumanPerformerName X
00404036 HumanPerformerOrganization X
00880200 IconImageSequence X
00084000 IdentifyingComments X
00204000 ImageComments X
00284000 ImagePresentationComments X
00402400 ImagingServiceRequestComments X
40080300 Impressions X
00080015 InstanceCoercionDateTime X
00080012 InstanceCreationDate X/D
00080013 InstanceCreationTime X/Z/D
00080014 InstanceCreatorUID U
00080082 InstitutionCodeSequence X/Z/D
00080081 InstitutionAddress X
00080080 InstitutionName X/Z/D
00081041 InstitutionalDepartmentTypeCodeSequence X
00081040 InstitutionalDepartmentName X
00101050 InsurancePlanIdentification X
00401011 IntendedRecipientsOfResultsIdentificationSequence X
40080111 InterpretationApproverSequence X
4008010C InterpretationAuthor X
40080115 InterpretationDiagnosisDescription X
40080202 InterpretationIDIssuer X
40080102 InterpretationRecorder X
4008010B InterpretationText X
4008010A InterpretationTranscriber X
00083010 IrradiationEventUID U
00380011 IssuerOfAdmissionID X
00380014 IssuerOfAdmissionIDSequence X
00100021 IssuerOfPatientID X
00380061 IssuerOfServiceEpisodeID X
00380064 IssuerOfServiceEpisodeIDSequence X
00402004 IssueDateOfImagingServiceRequest X
00402005 IssueTimeOfImagingServiceRequest X
00281214 LargePaletteColorLookupTableUID U
001021D0 LastMenstrualDate X
04000404 MAC X
00020003 MediaStorageSOPInstanceUID U
00102000 MedicalAlerts X
00101090 MedicalRecordLocator X
00101080 MilitaryRank X
04000550 ModifiedAttributesSequence X
00203406 ModifiedImageDescription X
00203401 ModifyingDeviceID X
00203404 ModifyingDeviceManufacturer X
00081060 NameOfPhysiciansReadingStudy X
00401010 NamesOfIntendedRecipientsOfResults X
00102180 Occupation X
00081072 OperatorIdentificationSequence X
00081070 OperatorsName X
04000561 OriginalAttributesSequence X
00402010 OrderCallbackPhoneNumber X
00402008 OrderEnteredBy X
00402009 OrderEntererLocation X
00101000 OtherPatientIDs X
00101002 OtherPatientIDsSequence X
00101001 OtherPatientNames X
00080024 OverlayDate X
00080034 OverlayTime X
00281199 PaletteColorLookupTableUID U
0040A07A ParticipantSequence X
00101040 PatientAddress X
00104000 PatientComments X
00100020 PatientID Z
00102203 PatientSexNeutered X/Z
00380500 PatientState X
00401004 PatientTransportArrangements X
00101010 PatientAge X
00100030 PatientBirthDate Z
00101005 PatientBirthName X
00100032 PatientBirthTime X
00100033 PatientBirthDateInAlternativeCalendar X
00100034 PatientDeathDateInAlternativeCalendar X
00100035 PatientAlternativeCalendar X
00380400 PatientInstitutionResidence X
00100050 PatientInsurancePlanCodeSequence X
00101060 PatientMotherBirthName X
00100010 PatientName Z
00100101 PatientPrimaryLanguageCodeSequence X
00100102 PatientPrimaryLanguageModifierCodeSequence X
001021F0 PatientReligiousPreference X
00100040 PatientSex Z
00101020 PatientSize X
00102155 PatientTelecomInformation X
00102154 PatientTelephoneNumbers X
00101030 PatientWeight X
00400243 PerformedLocation X
00400254 PerformedProcedureStepDescription X
00400250 PerformedProcedureStepEndDate X
00400251 PerformedProcedureStepEndTime X
00400253 PerformedProcedureStepID X
00400244 PerformedProcedureStepStartDate X
00400245 PerformedProcedureStepStartTime X
00400241 PerformedStationAETitle X
00404030 PerformedStationGeographicLocationCodeSequence X
00400242 PerformedStationName X
00404028 PerformedStationNameCodeSequence X
00081052 PerformingPhysicianIdentificationSequence X
00081050 PerformingPhysicianName X
00401102 PersonAddress X
00401101 PersonIdentificationCodeSequence D
0040A123 PersonName D
00401103 PersonTelephoneNumbers X
40080114 PhysicianApprovingInterpretation X
00081062 PhysiciansReadingStudyIdentificationSequence X
00081048 PhysiciansOfRecord X
00081049 PhysiciansOfRecordIdentificationSequence X
00402016 PlacerOrderNumberImagingServiceRequest Z
00181004 PlateID X
00400012 PreMedication X
001021C0 PregnancyStatus X
00181030 ProtocolName X/D
00181078 RadiopharmaceuticalStartDateTime X/D
00181072 RadiopharmaceuticalStartTime X/D
00181079 RadiopharmaceuticalStopDateTime X/D
00181073 RadiopharmaceuticalStopTime X/D
00402001 ReasonForTheImagingServiceRequest X
00321030 ReasonForStudy X
04000402 ReferencedDigitalSignatureSequence X
30060024 ReferencedFrameOfReferenceUID U
00404023 ReferencedGeneralPurposeScheduledProcedureStepTransactionUID U
00081140 ReferencedImageSequence X/Z/U*
00101100 ReferencedPatientPhotoSequence X
00081120 ReferencedPatientSequence X
00081111 ReferencedPerformedProcedureStepSequence X/Z/D
04000403 ReferencedSOPInstanceMACSequence X
00081155 ReferencedSOPInstanceUID U
00041511 ReferencedSOPInstanceUIDInFile U
00081110 ReferencedStudySequence X/Z
00080092 ReferringPhysicianAddress X
00080096 ReferringPhysicianIdentificationSequence X
00080090 ReferringPhysicianName Z
00080094 ReferringPhysicianTelephoneNumbers X
00102152 RegionOfResidence X
300600C2 RelatedFrameOfReferenceUID U
00400275 RequestAttributesSequence X
00321070 RequestedContrastAgent X
00401400 RequestedProcedureComments X
00321060 RequestedProcedureDescription X/Z
00401001 RequestedProcedureID X
00401005 RequestedProcedureLocation X
00321032 RequestingPhysician X
00321033 RequestingService X
00102299 ResponsibleOrganization X
00102297 ResponsiblePerson X
40084000 ResultsComments X
40080118 ResultsDistributionListSequence X
40080042 ResultsIDIssuer X
300E0008 ReviewerName X/Z
00380016 RouteOfAdmissions X
0038001A ScheduledAdmissionDate X
0038001B ScheduledAdmissionTime X
0038001C ScheduledDischargeDate X
0038001D ScheduledDischargeTime X
00404034 ScheduledHumanPerformersSequence X
0038001E ScheduledPatientInstitutionResidence X
0040000B ScheduledPerformingPhysicianIdentificationSequence X
00400006 ScheduledPerformingPhysicianName X
00400004 ScheduledProcedureStepEndDate X
00400005 ScheduledProcedureStepEndTime X
00400007 ScheduledProcedureStepDescription X
00400011 ScheduledProcedureStepLocation X
00400002 ScheduledProcedureStepStartDate X
00400003 ScheduledProcedureStepStartTime X
00400001 ScheduledStationAETitle X
00404027 ScheduledStationGeographicLocationCodeSequence X
00400010 ScheduledStationName X
00404025 ScheduledStationNameCodeSequence X
00321020 ScheduledStudyLocation X
00321021 ScheduledStudyLocationAETitle X
00321000 ScheduledStudyStartDate X
00321001 ScheduledStudyStartTime X
00321010 ScheduledStudyStopDate X
00321011 ScheduledStudyStopTime X
00080021 SeriesDate X/D
0008103E SeriesDescription X
0020000E SeriesInstanceUID U
00080031 SeriesTime X/D
00380062 ServiceEpisodeDescription X
00380060 ServiceEpisodeID X
001021A0 SmokingStatus X
00080018 SOPInstanceUID U
00082112 SourceImageSequence X/Z/U*
00380050 SpecialNeeds X
00189516 StartAcquisitionDateTime X/D
00081010 StationName X/Z/D
00880140 StorageMediaFileSetUID U
00324000 StudyComments X
00080020 StudyDate Z
00081030 StudyDescription X
00200010 StudyID Z
00320012 StudyIDIssuer X
0020000D StudyInstanceUID U
00080030 StudyTime Z
00320032 StudyVerifiedDate X
00320033 StudyVerifiedTime X
00320034 StudyReadDate X
00320035 StudyReadTime X
00321040 StudyArrivalDate X
00321041 StudyArrivalTime X
00321050 StudyCompletionDate X
00321051 StudyCompletionTime X
00200200 SynchronizationFrameOfReferenceUID U
00182042 TargetUID U
0040A354 TelephoneNumberTrial X
0040DB0D TemplateExtensionCreatorUID U
0040DB0C TemplateExtensionOrganizationUID U
40004000 TextComments X
20300020 TextString X
0040A122 Time D
00181201 TimeOfLastCalibration X
00181014 TimeOfSecondaryCapture X
00080201 TimezoneOffsetFromUTC X
00880910 TopicAuthor X
00880912 TopicKeywords X
00880906 TopicSubject X
00880904 TopicTitle X
00081195 TransactionUID U
0040A124 UID U
0040A030 VerificationDateTime D
0040A088 VerifyingObserverIdentificationCodeSequence Z
0040A075 VerifyingObserverName D
0040A073 VerifyingObserverSequence D
0040A027 VerifyingOrganization X
00384000 VisitComments X
00120010 ClinicalTrialSponsorName D
00120020 ClinicalTrialProtocolID D
00120021 ClinicalTrialProtocolName Z
00120030 ClinicalTrialSiteID Z
00120031 ClinicalTrialSiteName Z
00120040 ClinicalTrialSubjectID D
00120042 ClinicalTrialSubjectReadingID D
00120050 ClinicalTrialTimePointID Z
00120051 ClinicalTrialTimePointDescription X
00120060 ClinicalTrialCoordinatingCenterName Z
00120071 ClinicalTrialSeriesID X
00120072 ClinicalTrialSeriesDescription X
00120081 ClinicalTrialProtocolEthicsCommitteeName D
00120082 ClinicalTrialProtocolEthicsCommitteeApprovalNumber X
"""


def _parse(text: str) -> dict[int, tuple[str, str]]:
    table: dict[int, tuple[str, str]] = {}
    for line in text.split("\n"):
        if not line.strip():
            continue
        tag, keyword, action = line.split()
        table[int(tag[-8:], 16)] = (keyword, action)
    return table


#: (group << 16 | element) -> (keyword, Basic Profile action).
BASIC_PROFILE: dict[int, tuple[str, str]] = _parse(_ROWS)


def action(tag: int) -> str | None:
    """The Basic Profile action of ``tag`` (including the group rows), or None when unlisted."""
    group, element = tag >> 16, tag & 0xFFFF
    if tag in BASIC_PROFILE:
        return BASIC_PROFILE[tag][1]
    if group % 2 == 1:
        return "X"  # private attributes
    if 0x5000 <= group <= 0x50FF and group % 2 == 0:
        return "X"  # curve data
    if 0x6000 <= group <= 0x60FF and group % 2 == 0 and element in (0x3000, 0x4000):
        return "X"  # overlay data, overlay comments
    return None
