º
Gsha256:dac1d7cfa95021764849fd102524e141488c5e3a90f861dbb5a12d9ac8584f85Gsha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855&application/vnd.oci.image.layer.v1.tar
fastcdc-2020@€ €(