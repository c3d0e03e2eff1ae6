"""Views of a model for distillation: its logits and named intermediate features from one call.

A feature is named by a path (see `kd_tf.distill.features.feature_path`): a key of the model's dict
output, an element of a list output, a layer name of a functional model, or a path into a layer's dict
output. `ModelView` builds, once, the small extractor model that returns them all.
"""

import keras

from kd_tf.distill.features import feature_path
from kd_tf.distill.targets import LOGITS

_OUTPUT = "__output__"


def symbolic_output(layer):
    """A layer's symbolic output in a functional model, with its structure.

    Keras keeps a node's outputs flattened (`layer.output` of a layer that
    returns a dict is a list); this packs them back into the structure the
    layer returns, e.g. the TF Hub output dict of a `HubEncoder`.

    Example:
    ```python
    symbolic_output(find_encoder(classifier))["pooled_output"]
    ```
    """
    output = layer.output
    node = layer._inbound_nodes[0]
    if isinstance(output, (list, tuple)) and len(node.outputs) > 1:
        spec = layer.compute_output_spec(*node.arguments.args, **node.arguments.kwargs)
        output = keras.tree.pack_sequence_as(spec, node.outputs)
    return output


def _index(value, path, what):
    for part in path:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            raise ValueError(
                f"Cannot find {part!r} of feature path {path} in the {what}'s outputs. Name a key of "
                "its dict output, a layer name, or a path such as 'encoder/encoder_outputs/3'."
            ) from None
    return value


class ModelView:
    """Calls a model once and returns a flat dict: `logits` and every requested feature.

    Features that are keys of the model's dict output are read from it; the others start with a layer
    name of a functional model, so a small extractor model over the same layers is built once.
    Deliberately not a Keras layer, so that the distiller does not track the model's weights twice.
    """

    def __init__(self, model, features, logits_key, what):
        self.model = model
        self.features = list(dict.fromkeys(features))
        self.logits_key = logits_key
        self.what = what
        self.extractor = None
        symbolic = is_functional(model)
        output = symbolic_io(model, "output") if symbolic else None
        layer_features = [f for f in self.features if not self._in_output(output, f)]
        if layer_features:
            if not symbolic:
                raise ValueError(
                    f"The {what} is not a functional/Sequential model, so its layers' outputs "
                    f"{layer_features} cannot be extracted. Return them in a dict output, or build the "
                    "model with the functional API."
                )
            outputs = {_OUTPUT: output}
            for spec in layer_features:
                path = feature_path(spec)
                try:
                    layer = model.get_layer(path[0])
                except ValueError:
                    raise ValueError(
                        f"The {what} has no output key or layer named {path[0]!r} (feature {spec!r}). "
                        f"Layers: {[layer.name for layer in model.layers]}."
                    ) from None
                outputs[str(spec)] = _index(symbolic_output(layer), path[1:], what)
            self.extractor = keras.Model(
                symbolic_io(model, "input"), outputs, name=f"{model.name}_distill_view"
            )
        self.symbolic = None  # the symbolic outputs, when the model is functional (for widths)
        if symbolic:
            self.symbolic = self._from_output(output, self.extractor.output if self.extractor else None)

    @staticmethod
    def _in_output(output, spec):
        path = feature_path(spec)
        return isinstance(output, dict) and path[0] in output

    def _from_output(self, output, extracted):
        if extracted is not None:
            output = extracted[_OUTPUT]
        result = {}
        if isinstance(output, dict):
            if self.logits_key not in output:
                raise ValueError(
                    f"The {self.what} returns a dict without the logits key {self.logits_key!r} "
                    f"(keys: {sorted(output)}); pass logits_key=... to the Distiller."
                )
            result[LOGITS] = output[self.logits_key]
        else:
            result[LOGITS] = output
        for spec in self.features:
            if self._in_output(output, spec):
                result[str(spec)] = _index(output, feature_path(spec), self.what)
            else:
                result[str(spec)] = extracted[str(spec)]
        return result

    def __call__(self, x, training):
        if self.extractor is not None:
            return self._from_output(None, self.extractor(x, training=training))
        return self._from_output(self.model(x, training=training), None)


def is_functional(model):
    try:
        return model.inputs is not None and model.outputs is not None
    except (AttributeError, ValueError):
        return False


def symbolic_io(model, what):
    """`model.output` / `model.input`, also for a Sequential model that was never called."""
    try:
        return getattr(model, what)
    except AttributeError:
        values = getattr(model, what + "s")
        return values[0] if len(values) == 1 else values


__all__ = ["ModelView", "is_functional", "symbolic_io", "symbolic_output"]
