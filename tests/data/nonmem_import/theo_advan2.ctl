$PROBLEM Theophylline, one-compartment oral (hand-written test of calibration.read_nonmem)
; Boeckmann, Sheiner & Beal 1994 theophylline data (R datasets::Theoph), 12 subjects.
$INPUT ID TIME DV=CONC AMT EVID CMT WT
$DATA theo.csv IGNORE=@
$SUBROUTINES ADVAN2 TRANS2
$PK
TVCL = THETA(1)*(WT/70)**THETA(4)
KA = THETA(3)*EXP(ETA(1))
CL = TVCL*EXP(ETA(2))
V = THETA(2)*EXP(ETA(3))
S2 = V
$ERROR
IPRED = F
Y = IPRED + EPS(1)
$THETA (0, 3) ; TVCL
$THETA (0, 30) ; TVV
$THETA (0, 1) ; TVKA
$THETA 0.75 FIX ; CL_WT
$OMEGA 0.3 0.1 0.1
$SIGMA 1
$ESTIMATION METHOD=1 INTERACTION
