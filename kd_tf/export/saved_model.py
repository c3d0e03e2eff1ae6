"""SavedModels for servers: the serving model on raw text and the TF-Hub-format encoder."""

from __future__ import annotations


def track_weights(root, student):
    """Makes `root` own every variable the student's call captures."""
    from kd_tf.bert import HubEncoder

    root.student_variables = [v.value for v in student.weights]
    root.hub_modules = [layer._module for layer in student._flatten_layers() if isinstance(layer, HubEncoder)]


def write_serving(student, preprocessor, label_names, path):
    import tensorflow as tf

    root = tf.Module()
    track_weights(root, student)
    root.preprocessor = preprocessor._module
    labels = tf.constant(label_names)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")], autograph=False)
    def serve(text):
        logits = tf.cast(student(preprocessor(text), training=False), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        label_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "label_id": label_id, "label": tf.gather(labels, label_id)}

    root.serve = serve
    tf.saved_model.save(root, path, signatures={"serving_default": serve})


def write_hub_encoder(encoder, encoder_meta, encoder_path, path):
    """The fine-tuned encoder as a TF-Hub-format folder."""
    import tensorflow as tf

    from kd_tf.bert import hub_format

    if encoder_meta is not None:
        keras_encoder = hub_format.load_bert_encoder(
            encoder_path or encoder.handle, variables=encoder.saved_variables
        )
        hub_format.save_bert_encoder(keras_encoder, path)
    else:  # a published TF Hub encoder: its restored module holds the weights
        tf.saved_model.save(encoder._module, path)
