"""The ``nodule`` model: 3D lung-nodule segmentation on chest CT, turned into detection candidates.

* :mod:`models.nodule.network` - the MONAI SegResNet patch segmenter (probability output);
* :mod:`models.nodule.preprocess` - HU windowing and resampling to the model spacing;
* :mod:`models.nodule.inference` - sliding-window inference with a torch network or ONNX session;
* :mod:`models.nodule.postprocess` - connected components to candidates with diameters.
"""
