"""Safety checks shared by the data, evaluate and monitor stages: toxicity scorers (lexicon, classifier, guard
model), the counterfactual bias probe and the optional LLM judge."""
