½
Gsha256:dac1d7cfa95021764849fd102524e141488c5e3a90f861dbb5a12d9ac8584f85Gsha256:40266a5fbe92fbce83ce5fed70c3b8f83f3fdd0eb53fb64eee16bc954f92d8dd&application/vnd.oci.image.layer.v1.tar0Ì
fastcdc-2020@€ €("
etc¤0€ øú"&
	etc/hosts¤0€ øú@b
	user.notev"
bin/big¤0€ øú@¸"
bin/sh¤0€ øúJbig"
bin/sh2¤0€ øúJbin/big"
etc/.wh.old¤0€ øú"
etc/.wh..wh..opq¤0€ øú"
dev/null¤0€ øúPX"
run/fifo¤0€ øú*(
 §ûUŽPÚ“œmÖnXJ|ÑÓ×ÿuæ/ôD“Yçƒ½(½*+
 ³úâk­l³C)‚R2]eAøåÃƒÍP8þÜ ½(Ü*+
 Æ¼pÈ+_E0N¬cÚ‚ªûîQ>M¬†[odÌ7Ö]Þå ™(å*)
 4(³P<OOS¢˜Œdì¦B? /Ô/­ÔÖ?¤²1Â*O þ(O*+
 „mlá³ø%:}ÇuJnYDÕ?&”°.79§› Í(›*+
 Xsâ©ó­ç{Ea†§[Åo+$µa¥`<g$AK†Ã© è	(©*+
 |ïæù½FXþ	ôÁñó(5\Ûùê>ÌÁ)2~ÓŠ]’ ‘(’*+
 N·ñe'¢/ƒñÄÁ-‹ÑxnÈ¥J\¹VK}•OVAç £(ç*)
 ŠnRSùðX9¿#xˆ]bnÌ} eIÌvR½«µ¹ÏK Š(K*)
 ÍlWîÂ¹áJá{…V¬­ÄéCõ8IHÅY˜±îL Õ(L*+
 W|¹…È˜|Ìð(Ô§ó
ƒˆ0(™ÿÚ½À#âÁ@É ¡(É*+
 ÏÉ…ƒGÝ9Å0F€d4
ùIŽ8)þvB”aAË ê(Ë*)
 ²0`›t0zÑk¢·´ˆ¬Ú€Íù(Z%®ŽÞvà
!÷Ž µ(2L
Gsha256:40266a5fbe92fbce83ce5fed70c3b8f83f3fdd0eb53fb64eee16bc954f92d8ddÌ