# Protected: where the data comes from. Agents may not edit this file.
TRAIN_FILE = "train.json"
