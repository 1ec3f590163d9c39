"""The file MLflow runs to build an export's pyfunc model ("models from code"): the model is made from this code
where it is loaded, rather than unpickled from a file."""

from mlflow.models import set_model

from ftcore.deploy.pyfunc import ExportedModel

set_model(ExportedModel())
