"""medgate's DICOM implementation identity (PS3.7 D.3.3.2, PS3.10 7.1): sent in A-ASSOCIATE-AC
and written in the File Meta Information of every spooled instance."""
from pydicom.uid import UID

#: A UUID-derived UID (PS3.5 B.2) naming this implementation.
IMPLEMENTATION_CLASS_UID = UID("2.25.157459375018971029476997973147153175181")
IMPLEMENTATION_VERSION = "MEDGATE_0_1"
