-- Runs once, when the PostgreSQL volume is first initialised: MLflow's database beside edgeloop's.
CREATE DATABASE mlflow OWNER edgeloop;
