"""lmms-eval entry point (group ``lmms_eval.models``): names the model ``videorope`` without importing it."""


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="videorope", simple_class_path="videorope_train.eval.lmms.VideoRope")
