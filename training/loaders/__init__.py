"""Loaders of public datasets, returning the item dicts the tasks train on.

Each loader takes the dataset's root folder as distributed and returns a
:class:`~training.data.ListDataset` that reads files lazily:

* :func:`tbx11k`, :func:`shenzhen`, :func:`montgomery`: chest X-ray TB (``tb`` task items);
* :func:`ham10000`, :func:`isic2019`: dermoscopy classification;
* :func:`luna16`: CT scans with nodule centres in voxels (MetaImage read by :mod:`.volumes`);
* :func:`decathlon`: Medical Segmentation Decathlon datalist JSON;
* :func:`medgate_export`: a ``medgate export-training`` folder (DICOM + datalist, ``tb`` items).
"""
from __future__ import annotations

from training.loaders.ct import decathlon, luna16
from training.loaders.cxr import medgate_export, montgomery, shenzhen, tbx11k
from training.loaders.derm import HAM10000_CLASSES, ISIC2019_CLASSES, ham10000, isic2019

__all__ = ["HAM10000_CLASSES", "ISIC2019_CLASSES", "decathlon", "ham10000", "isic2019", "luna16", "medgate_export", "montgomery",
           "shenzhen", "tbx11k"]
