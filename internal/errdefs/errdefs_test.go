package errdefs

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
)

func TestClassOf(t *testing.T) {
	base := errors.New("boom")
	cases := []struct {
		name   string
		err    error
		class  *Class
		status int
	}{
		{"unclassified is internal", base, Internal, http.StatusInternalServerError},
		{"invalid", With(InvalidArgument, base), InvalidArgument, http.StatusBadRequest},
		{"wrapped keeps class", fmt.Errorf("running: %w", With(Overloaded, base)), Overloaded, http.StatusTooManyRequests},
		{"not found", With(NotFound, base), NotFound, http.StatusNotFound},
		{"too large", With(TooLarge, base), TooLarge, http.StatusRequestEntityTooLarge},
		{"forbidden", With(Forbidden, base), Forbidden, http.StatusForbidden},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ClassOf(tc.err)
			if c != tc.class || c.HTTPStatus() != tc.status {
				t.Fatalf("class %v (%d), want %v (%d)", c, c.HTTPStatus(), tc.class, tc.status)
			}
			if !errors.Is(tc.err, base) {
				t.Fatal("classifying lost the original error")
			}
			if tc.err.Error() != "boom" && tc.err.Error() != "running: boom" {
				t.Fatalf("message changed: %q", tc.err.Error())
			}
		})
	}
	if With(NotFound, nil) != nil {
		t.Fatal("With(class, nil) must be nil")
	}
}
