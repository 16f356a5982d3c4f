"""The one list of scene classes and recording devices (TAU Urban Acoustic Scenes 2022 Mobile)."""

CLASSES = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)
DEVICES = ("A", "B", "C", "S1", "S2", "S3", "S4", "S5", "S6")
SEEN_DEVICES = ("A", "B", "C", "S1", "S2", "S3")
UNSEEN_DEVICES = ("S4", "S5", "S6")

SPLIT_FILES = {
    "train": "evaluation_setup/fold1_train.csv",
    "evaluate": "evaluation_setup/fold1_evaluate.csv",
    "test": "evaluation_setup/fold1_test.csv",
}
