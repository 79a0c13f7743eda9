"""surrogates: ML surrogates trained on mechanistic simulations (not built yet).

Will hold XGBoost, Flax LSTM and Transformer and hybrid surrogates sharing one interface
(fit, predict, save, load), SHAP explanations, and federated training with Flower.
"""
