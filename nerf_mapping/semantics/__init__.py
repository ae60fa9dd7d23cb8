"""Open-vocabulary semantics: 2D vision-language teachers (:mod:`.teachers`) and LERF-style relevancy
(:mod:`.relevancy`). The language-feature field that lifts teacher features into the map builds on these."""
