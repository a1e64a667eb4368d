"""Wire codecs of the model surfaces: TF Serving's REST JSON and the Open Inference Protocol's tensors. No Flask."""
