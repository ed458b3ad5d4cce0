"""ALSUV's networks as plain ``nn.Module``s: the StyleGAN2 generator the attack searches in
(``stylegan2``) and the face encoders it attacks and is judged by (``encoders``, with dlib's
ResNet in ``dlib_encoder``). The attack has two kinds of network, so its model room is a
package with one module per kind.
"""
