"""File formats: prediction files, the CSV tables (duos, backbones, temperatures, results), model names, safe writes."""
