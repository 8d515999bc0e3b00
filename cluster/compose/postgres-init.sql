-- Two databases on one server: the control plane's store and MLflow's tracking store.
CREATE DATABASE mlflow OWNER myopia;
