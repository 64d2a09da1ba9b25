"""The embedded default dataset: crops of real photos that scikit-image and scikit-learn ship, and clips
made from them. Nothing is downloaded."""
