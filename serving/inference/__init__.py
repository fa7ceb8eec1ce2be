"""Model inference: the Ray Serve model deployments, how a batch becomes engine calls (runners), the
engines (onnxruntime, torch) and which version of each model is deployed."""
